//! Test support: real clusters, an in-process capture, a pgoutput encoder.
#![allow(dead_code)]

pub mod cluster;
pub mod encoder;
pub mod proxy;
pub mod running;
pub mod tap;
pub mod twins;
pub mod wait;

/// Runs an async scenario against the default server build and a 16+ build.
#[macro_export]
macro_rules! on_every_server {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn default_server() {
                super::$scenario(&$crate::support::cluster::default_bin()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn server_16_plus() {
                super::$scenario(&$crate::support::cluster::next_bin()).await
            }
        }
    };
}

/// [`on_every_server`] plus PostgreSQL 14 and 17 (the capture tests: every
/// pgoutput protocol version blue may speak, 2 to 4).
#[macro_export]
macro_rules! on_every_major {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn default_server() {
                super::$scenario(&$crate::support::cluster::default_bin()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn server_16_plus() {
                super::$scenario(&$crate::support::cluster::next_bin()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg14() {
                super::$scenario(&$crate::support::cluster::bin(14)).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg17() {
                super::$scenario(&$crate::support::cluster::bin(17)).await
            }
        }
    };
}

/// A scenario taking (blue, green) builds, as one test per version pair:
/// `on_version_pairs!(scenario, blue_14_green_18 => (14, 18))`.
#[macro_export]
macro_rules! on_version_pairs {
    ($scenario:ident, $($test:ident => ($blue:literal, $green:literal)),+ $(,)?) => {
        mod $scenario {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$scenario(
                        &$crate::support::cluster::bin($blue),
                        &$crate::support::cluster::bin($green),
                    )
                    .await
                }
            )+
        }
    };
}

/// An error and its causes as teal prints them.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    teal::error::Report(e).to_string()
}
