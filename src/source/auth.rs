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
    let mut scram: Option<ScramSha256> = None;
    let mut bound = false;
    loop {
        match conn.next_frame().await? {
            Frame::Message(Message::AuthenticationOk) => break,
            Frame::Message(Message::AuthenticationCleartextPassword) => {
                let pw = password()?;
                frontend::password_message(pw.expose().as_bytes(), &mut conn.write_buf)
                    .map_err(|e| conn.protocol(e.to_string()))?;
                conn.flush().await?;
            }
            Frame::Message(Message::AuthenticationMd5Password(body)) => {
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
                let (mechanism, binding) = match (offered_plus, end_point) {
                    (true, Some(hash)) => {
                        bound = true;
                        (
                            sasl::SCRAM_SHA_256_PLUS,
                            ScramBinding::tls_server_end_point(hash),
                        )
                    }
                    _ if !offered_plain => {
                        return Err(auth_error(
                            "the server offers no SASL mechanism teal supports (SCRAM-SHA-256)"
                                .into(),
                        ));
                    }
                    // Over TLS without PLUS on offer, say "client supports, server doesn't" ('y').
                    _ if conn.tls && !offered_plus => {
                        (sasl::SCRAM_SHA_256, ScramBinding::unrequested())
                    }
                    _ => (sasl::SCRAM_SHA_256, ScramBinding::unsupported()),
                };
                if conninfo.channel_binding == ChannelBinding::Require && !bound {
                    return Err(auth_error(
                        "channel_binding=require, but channel binding is not possible on this connection (needs TLS, SCRAM-SHA-256-PLUS and a certificate signed with SHA-2)".into(),
                    ));
                }
                let pw = password()?;
                let client = ScramSha256::new(pw.expose().as_bytes(), binding);
                frontend::sasl_initial_response(mechanism, client.message(), &mut conn.write_buf)
                    .map_err(|e| conn.protocol(e.to_string()))?;
                conn.flush().await?;
                scram = Some(client);
            }
            Frame::Message(Message::AuthenticationSaslContinue(body)) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| conn.protocol("SASL continue without SASL start"))?;
                client
                    .update(body.data())
                    .map_err(|e| auth_error(format!("SCRAM exchange failed: {e}")))?;
                frontend::sasl_response(client.message(), &mut conn.write_buf)
                    .map_err(|e| conn.protocol(e.to_string()))?;
                conn.flush().await?;
            }
            Frame::Message(Message::AuthenticationSaslFinal(body)) => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| conn.protocol("SASL final without SASL start"))?;
                client.finish(body.data()).map_err(|e| {
                    auth_error(format!("the server's SCRAM signature does not verify: {e}"))
                })?;
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
    if conninfo.channel_binding == ChannelBinding::Require && !bound {
        return Err(auth_error(
            "channel_binding=require, but the server authenticated without SCRAM channel binding"
                .into(),
        ));
    }
    Ok(())
}
