//! Server builds: finding one, and a copy the server's user can run,
//! made and reused only where nobody else can slip files in (issue 19.8).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{LocalError, io, run, server_owner};

/// Where server builds are looked for when `TEAL_PG_BIN` is not set.
const SEARCH_ROOTS: &[&str] = &["/usr/lib/postgresql", "/usr/local/pgsql"];

/// A PostgreSQL server build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBin {
    /// The directory holding `postgres`, `initdb`, `pg_ctl`.
    pub dir: PathBuf,
    /// Major version.
    pub version: u32,
}

impl PgBin {
    /// The build in `dir`.
    pub fn at(dir: &Path) -> Result<PgBin, LocalError> {
        if !["postgres", "initdb", "pg_ctl"]
            .iter()
            .all(|p| dir.join(p).is_file())
        {
            return Err(LocalError::NoBinaries {
                looked: format!("{} lacks postgres, initdb or pg_ctl", dir.display()),
            });
        }
        let out = Command::new(dir.join("postgres"))
            .arg("--version")
            .output()
            .map_err(io(format!("running {}/postgres --version", dir.display())))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "postgres (PostgreSQL) 15.18 (Debian ...)"
        let version = text
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.split(['.', 'b', 'r']).next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| LocalError::Failed {
                what: format!("reading the version of {}/postgres", dir.display()),
                output: text.clone().into_owned(),
            })?;
        Ok(PgBin {
            dir: dir.to_path_buf(),
            version,
        })
    }

    /// The newest build under `root` (`root/*/bin`).
    pub fn newest_under(root: &Path) -> Option<PgBin> {
        let mut found: Vec<PgBin> = std::fs::read_dir(root)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|bin| bin.join("postgres").is_file() && bin.join("initdb").is_file())
            .filter_map(|bin| PgBin::at(&bin).ok())
            .collect();
        found.sort_by_key(|b| b.version);
        found.pop()
    }

    /// `TEAL_PG_BIN`, else the newest build under the usual places.
    pub fn find() -> Result<PgBin, LocalError> {
        if let Some(dir) = std::env::var_os("TEAL_PG_BIN") {
            return PgBin::at(Path::new(&dir));
        }
        for root in SEARCH_ROOTS {
            if let Some(bin) = PgBin::newest_under(Path::new(root)) {
                return Ok(bin);
            }
        }
        let direct = Path::new("/usr/local/pgsql/bin");
        if direct.join("postgres").is_file() {
            return PgBin::at(direct);
        }
        Err(LocalError::NoBinaries {
            looked: format!(
                "TEAL_PG_BIN is not set; looked in {}/*/bin and {}",
                SEARCH_ROOTS.join("/*/bin, "),
                direct.display()
            ),
        })
    }

    /// This build, or a copy the server's user can execute.
    pub fn runnable(self) -> Result<PgBin, LocalError> {
        let owner = server_owner()?;
        let mut probe = Command::new(self.dir.join("postgres"));
        probe.arg("--version").current_dir("/");
        if let Some((uid, gid)) = owner {
            probe.uid(uid).gid(gid);
        }
        if probe.output().is_ok_and(|o| o.status.success()) {
            return Ok(self);
        }
        let install = self.dir.parent().unwrap_or(&self.dir);
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let copy = std::env::temp_dir().join(format!(
            "teal-pg{}-{euid}-{}",
            self.version,
            install.to_string_lossy().replace('/', "_")
        ));
        install_copy(install, &copy)?;
        Ok(PgBin {
            dir: copy.join("bin"),
            version: self.version,
        })
    }
}

/// Copies the build at `install` to `copy` (readable by everyone, writable
/// by us alone), or reuses a copy already there when [`check_private`]
/// passes. The copy is made in a fresh private directory and renamed into
/// place, so nobody can slip files into it while it is made.
fn install_copy(install: &Path, copy: &Path) -> Result<(), LocalError> {
    if std::fs::symlink_metadata(copy).is_err() {
        let parent = copy.parent().unwrap_or(Path::new("/"));
        let staging = tempfile::Builder::new()
            .prefix("teal-pg-staging-")
            .tempdir_in(parent)
            .map_err(io("creating a temporary directory for the server build"))?;
        // Not -a: the copy belongs to us, whoever owned the original.
        run(
            Command::new("cp")
                .args(["-R", "-P", "--preserve=mode,timestamps,links"])
                .arg(install.join("."))
                .arg(staging.path()),
            None,
            "copying the server build",
        )?;
        run(
            Command::new("chmod")
                .args(["-R", "a+rX,go-w"])
                .arg(staging.path()),
            None,
            "making the server build readable",
        )?;
        std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(io("setting permissions of the server build"))?;
        let staging = staging.keep();
        if std::fs::rename(&staging, copy).is_err() {
            // Another process installed it first (checked below).
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    check_private(copy, true)
}

/// Checks that `path` is a directory (not a link) that we own and nobody else
/// may write to; with `recursive`, everything under it too. A directory
/// with a predictable name in a shared place (the system temporary
/// directory) may have been created by another local user first.
pub fn check_private(path: &Path, recursive: bool) -> Result<(), LocalError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let unsafe_because = |p: &Path, reason: String| LocalError::Unsafe {
        path: p.to_path_buf(),
        reason,
    };
    let meta =
        std::fs::symlink_metadata(path).map_err(io(format!("checking {}", path.display())))?;
    if !meta.is_dir() {
        return Err(unsafe_because(path, "it is not a directory".into()));
    }
    let mut pending = vec![(path.to_path_buf(), meta)];
    while let Some((p, meta)) = pending.pop() {
        use std::os::unix::fs::MetadataExt;
        if meta.uid() != euid {
            return Err(unsafe_because(
                &p,
                format!("it belongs to uid {}, not to us (uid {euid})", meta.uid()),
            ));
        }
        if !meta.file_type().is_symlink() && meta.mode() & 0o022 != 0 {
            return Err(unsafe_because(
                &p,
                format!("others may write to it (mode {:o})", meta.mode() & 0o7777),
            ));
        }
        if recursive && meta.is_dir() {
            for entry in std::fs::read_dir(&p).map_err(io(format!("reading {}", p.display())))? {
                let entry = entry.map_err(io(format!("reading {}", p.display())))?;
                let meta = std::fs::symlink_metadata(entry.path())
                    .map_err(io(format!("checking {}", entry.path().display())))?;
                pending.push((entry.path(), meta));
            }
        }
    }
    Ok(())
}

/// Creates the directory `path` (mode `mode`), or checks with
/// [`check_private`] (not recursively) the one already there.
pub fn private_dir(path: &Path, mode: u32) -> Result<(), LocalError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("setting permissions of {}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => check_private(path, false),
        Err(e) => Err(io(format!("creating {}", path.display()))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A stand-in server build: bin/postgres and lib/x.so.
    fn fake_install(root: &Path) -> PathBuf {
        let install = root.join("install");
        std::fs::create_dir_all(install.join("bin")).unwrap();
        std::fs::create_dir_all(install.join("lib")).unwrap();
        std::fs::write(install.join("bin/postgres"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            install.join("bin/postgres"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(install.join("lib/x.so"), b"").unwrap();
        install
    }

    fn assert_unsafe(result: Result<(), LocalError>, path: &Path, reason: &str) {
        match result {
            Err(LocalError::Unsafe { path: p, reason: r }) => {
                assert_eq!(p, path);
                assert!(r.contains(reason), "{r}");
            }
            other => panic!("expected Unsafe for {}, got {other:?}", path.display()),
        }
    }

    /// Issue 19.8: the copy of a server build is made privately and reused
    /// only while it is ours and nobody else may write to it.
    #[test]
    fn a_planted_server_copy_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let install = fake_install(tmp.path());

        // Made fresh: ours, readable by all, writable by us alone.
        let copy = tmp.path().join("copy");
        install_copy(&install, &copy).unwrap();
        assert!(copy.join("bin/postgres").is_file());
        assert_eq!(std::fs::metadata(&copy).unwrap().mode() & 0o777, 0o755);
        // Reused as it is.
        install_copy(&install, &copy).unwrap();

        // Something inside became writable by others.
        std::fs::set_permissions(
            copy.join("lib/x.so"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        assert_unsafe(
            install_copy(&install, &copy),
            &copy.join("lib/x.so"),
            "others may write to it",
        );

        // A world-writable directory planted at the name.
        let planted = tmp.path().join("planted");
        std::fs::create_dir_all(planted.join("bin")).unwrap();
        std::fs::write(planted.join("bin/postgres"), b"#!/bin/sh\nevil\n").unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_unsafe(
            install_copy(&install, &planted),
            &planted,
            "others may write to it",
        );

        // A link planted at the name.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&copy, &link).unwrap();
        assert_unsafe(install_copy(&install, &link), &link, "not a directory");

        // Another user's directory (only root can make one to test with).
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let foreign = tmp.path().join("foreign");
            std::fs::create_dir_all(foreign.join("bin")).unwrap();
            std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
            assert_unsafe(
                install_copy(&install, &foreign),
                &foreign,
                "belongs to uid 65534",
            );
            assert_unsafe(private_dir(&foreign, 0o755), &foreign, "belongs to uid");
        }
    }

    #[test]
    fn private_dirs_are_created_with_their_mode_or_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        private_dir(&dir, 0o700).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        private_dir(&dir, 0o700).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o733)).unwrap();
        assert_unsafe(private_dir(&dir, 0o700), &dir, "mode 733");
    }
}
