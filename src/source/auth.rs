//! Authentication of a replication session: trust, cleartext password,
//! MD5, and SCRAM-SHA-256 with channel binding (`tls-server-end-point`) as
//! libpq does it, after the StartupMessage and before ReadyForQuery.
//!
//! ```text
//! AuthenticationOk ─────────────────────────────────────────────────────▶ done
//! AuthenticationCleartextPassword / MD5Password ──▶ PasswordMessage ──▶ Ok
//! AuthenticationSASL ──▶ SASLInitialResponse ──▶ SASLContinue ──▶ SASLResponse ──▶ SASLFinal ──▶ Ok
//! ```
//!
//! `channel_binding=require` refuses a server that did not authenticate with
//! SCRAM channel binding; passwords never reach logs or errors.

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ChannelBinding as ScramBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use crate::config::{ChannelBinding, ConnInfo, Host, Password};
use crate::tls;

use super::conn::{Connection, Frame, Stream, server_error};
use super::error::SourceError;

/// Where a SCRAM exchange stands.
enum Sasl {
    /// Not started (no SASL request yet).
    None,
    /// Started with this client; `plus`: with channel binding.
    Started { client: ScramSha256, plus: bool },
    /// The server's final message verified: it knows the password (and,
    /// with `plus`, it is the server whose certificate the TLS session saw).
    Verified { plus: bool },
}

pub(super) async fn authenticate(
    conn: &mut Connection,
    conninfo: &ConnInfo,
    host: &Host,
) -> Result<(), SourceError> {
    let auth_error = |reason: String| SourceError::Auth {
        host: host.to_string(),
        user: conninfo.user.clone(),
        reason,
    };
    let password = || -> Result<Password, SourceError> {
        conninfo.password_for(host).ok_or_else(|| {
            auth_error(
                "the server asks for a password and none was given (URL, PGPASSWORD or the password file)"
                    .into(),
            )
        })
    };
    let require = conninfo.channel_binding == ChannelBinding::Require;
    // With channel_binding=require, only SCRAM with channel binding proves
    // the server is the one the TLS session reached: nothing is sent to a
    // server that asks for anything else.
    let refuse_unbound = |method: &str| {
        auth_error(format!(
            "channel_binding=require, but the server asks for {method} instead of SCRAM with channel binding; nothing was sent"
        ))
    };
    let mut sasl = Sasl::None;
    loop {
        match conn.next_frame().await? {
            Frame::Message(Message::AuthenticationOk) => {
                if matches!(sasl, Sasl::Started { .. }) {
                    return Err(auth_error(
                        "the server ended SCRAM authentication without its final message, so it never proved it knows the password".into(),
                    ));
                }
                break;
            }
            Frame::Message(Message::AuthenticationCleartextPassword) => {
                if require {
                    return Err(refuse_unbound("a cleartext password"));
                }
                let pw = password()?;
                frontend::password_message(pw.expose().as_bytes(), &mut conn.write_buf)
                    .map_err(|e| conn.protocol(e.to_string()))?;
                conn.flush().await?;
            }
            Frame::Message(Message::AuthenticationMd5Password(body)) => {
                if require {
                    return Err(refuse_unbound("an MD5 password"));
                }
                let pw = password()?;
                let hash = md5_hash(
                    conninfo.user.as_bytes(),
                    pw.expose().as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut conn.write_buf)
                    .map_err(|e| conn.protocol(e.to_string()))?;
                conn.flush().await?;
            }
            Frame::Message(Message::AuthenticationSasl(body)) => {
                if !matches!(sasl, Sasl::None) {
                    return Err(conn.protocol("a second SASL authentication request"));
                }
                let mut offered_plain = false;
                let mut offered_plus = false;
                let mut mechanisms = body.mechanisms();
                while let Some(m) = mechanisms
                    .next()
                    .map_err(|e| conn.protocol(e.to_string()))?
                {
                    offered_plain |= m == sasl::SCRAM_SHA_256;
                    offered_plus |= m == sasl::SCRAM_SHA_256_PLUS;
                }
                let end_point = match (&conn.stream, conninfo.channel_binding) {
                    (Stream::Tls(s), ChannelBinding::Prefer | ChannelBinding::Require) => s
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|cert| tls::server_end_point(cert)),
                    _ => None,
                };
                let (mechanism, binding, plus) = match (offered_plus, end_point) {
                    (true, Some(hash)) => (
                        sasl::SCRAM_SHA_256_PLUS,
                        ScramBinding::tls_server_end_point(hash),
                        true,
                    ),
                    _ if require => {
                        return Err(auth_error(
                            "channel_binding=require, but channel binding is not possible on this connection (needs TLS, SCRAM-SHA-256-PLUS and a certificate signed with SHA-2)".into(),
                        ));
                    }
                    _ if !offered_plain => {
                        return Err(auth_error(
                            "the server offers no SASL mechanism teal supports (SCRAM-SHA-256)"
                                .into(),
                        ));
                    }
                    // Over TLS without PLUS on offer, say "client supports, server doesn't" ('y').
                    _ if conn.tls && !offered_plus => {
                        (sasl::SCRAM_SHA_256, ScramBinding::unrequested(), false)
                    }
                    _ => (sasl::SCRAM_SHA_256, ScramBinding::unsupported(), false),
                };
                let pw = password()?;
                let client = ScramSha256::new(pw.expose().as_bytes(), binding);
                frontend::sasl_initial_response(mechanism, client.message(), &mut conn.write_buf)
                    .map_err(|e| conn.protocol(e.to_string()))?;
                conn.flush().await?;
                sasl = Sasl::Started { client, plus };
            }
            Frame::Message(Message::AuthenticationSaslContinue(body)) => {
                let Sasl::Started { client, .. } = &mut sasl else {
                    return Err(conn.protocol("SASL continue without SASL start"));
                };
                client
                    .update(body.data())
                    .map_err(|e| auth_error(format!("SCRAM exchange failed: {e}")))?;
                frontend::sasl_response(client.message(), &mut conn.write_buf)
                    .map_err(|e| conn.protocol(e.to_string()))?;
                conn.flush().await?;
            }
            Frame::Message(Message::AuthenticationSaslFinal(body)) => {
                let Sasl::Started { client, plus } = &mut sasl else {
                    return Err(conn.protocol("SASL final without SASL start"));
                };
                client.finish(body.data()).map_err(|e| {
                    auth_error(format!("the server's SCRAM signature does not verify: {e}"))
                })?;
                sasl = Sasl::Verified { plus: *plus };
            }
            Frame::Message(Message::ErrorResponse(body)) => {
                return Err(SourceError::Server {
                    context: format!("authenticating to {} as {:?}", conn.host, conninfo.user),
                    error: Box::new(server_error(body.fields())),
                });
            }
            Frame::Message(
                Message::AuthenticationGss
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationSspi
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGssContinue(_),
            ) => {
                return Err(auth_error(
                    "the server requires GSSAPI/Kerberos/SSPI authentication, which teal does not support; use scram-sha-256 in pg_hba.conf".into(),
                ));
            }
            _ => return Err(conn.protocol("unexpected message during authentication")),
        }
    }
    if require && !matches!(sasl, Sasl::Verified { plus: true }) {
        return Err(auth_error(
            "channel_binding=require, but the server authenticated without SCRAM channel binding"
                .into(),
        ));
    }
    Ok(())
}
