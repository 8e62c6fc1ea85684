//! The PostgreSQL wire protocol door (`[query] pg_listen`): psql, psycopg, DBeaver, Grafana.
//!
//! The protocol is pgwire's; every rule is the gate's ([`crate::gate`]), as for `POST /v1/sql`:
//! - the password is a token (the user name is free: the token says who the caller is), checked
//!   against the hashed tokens for the `sql` group; the user `anonymous` logs in without a
//!   password where the `sql` group is public; a failed login spends the address's budget;
//! - every statement spends the token's budget and runs within the limits, planned read-only;
//! - the simple and the extended query protocol (prepared statements with `$n` parameters);
//! - `BEGIN`, `COMMIT` and `ROLLBACK` are accepted and change nothing (every statement reads);
//! - a cancel request (psql's Ctrl-C) stops the running plan and frees its slot at once, and so
//!   does a client that hangs up mid-statement ([`watch_hang_up`]);
//! - with `[query] pg_tls`, TLS (libpq's `SSLRequest`, or a direct TLS handshake with ALPN
//!   `postgresql`), required: a login over plain text is refused before its password is asked for.
//!
//! Errors carry SQLSTATEs ([`sqlstate`]): 28P01 for a wrong token, 42501 for a refused statement
//! or table, 42601 for a syntax error, 53000 for the limits, 57014 for the time limit or a cancel,
//! 28000 for a plain-text login where TLS is required.

mod queries;
pub mod system;

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use hexpulse_common::serve::{TlsConfig, TlsError};
use hexpulse_common::tasks::Tasks;
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::{
    ClientInfo, PgWireConnectionState, PgWireServerHandlers, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::{Authentication, SecretKey};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio_util::sync::CancellationToken;

use crate::auth::Caller;
use crate::gate::{AbortOnDrop, Credential, Gate};
use crate::sql::SqlError;

/// The SQLSTATE of a gate's refusal or a query's failure.
pub fn sqlstate(e: &SqlError) -> &'static str {
    match (e.status, e.code) {
        (401, _) => "28P01",
        (403, _) => "42501",
        (400, "sql_syntax") => "42601",
        (400, "sql_plan") => "42000",
        (400, "not_supported" | "unsupported") => "0A000",
        (400, _) => "22000",
        (408 | 499, _) => "57014",
        (413 | 429 | 503, _) => "53000",
        _ => "XX000",
    }
}

/// `e` as the protocol's error; `fatal` ends the connection (a failed login).
pub(crate) fn pg_error(e: &SqlError, fatal: bool) -> PgWireError {
    let severity = if fatal { "FATAL" } else { "ERROR" };
    let mut info = ErrorInfo::new(
        severity.to_string(),
        sqlstate(e).to_string(),
        e.message.clone(),
    );
    // libpq reports a failed login without its SQLSTATE: the detail repeats it.
    info.detail = Some(format!(
        "hexpulse code: {}, SQLSTATE {}",
        e.code,
        sqlstate(e)
    ));
    PgWireError::UserError(Box::new(info))
}

/// A logged-in connection: who, from where, and the cancel of its running statement.
pub(crate) struct Session {
    pub(crate) caller: Caller,
    pub(crate) allow_raw: bool,
    pub(crate) peer: String,
    current: Current,
    _registered: Registered,
}

impl Session {
    /// A fresh cancel for the statement about to run (a cancel request fires the newest).
    pub(crate) fn start_statement(&self) -> CancellationToken {
        let token = CancellationToken::new();
        *self.current.lock().expect("lock") = token.clone();
        token
    }
}

/// The cancel of a connection's running statement (replaced as each statement starts).
type Current = Arc<Mutex<CancellationToken>>;

/// The connections that may be cancelled, by process id, with their secret keys; and each open
/// connection's cancel by its peer address, from its accept to its login.
#[derive(Default)]
struct Cancels {
    by_pid: Mutex<HashMap<i32, (SecretKey, Current)>>,
    by_peer: Mutex<HashMap<SocketAddr, Current>>,
}

/// Removes a connection from [`Cancels`] when it ends.
struct Registered {
    cancels: Arc<Cancels>,
    pid: i32,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.cancels.by_pid.lock().expect("lock").remove(&self.pid);
    }
}

/// The door's TLS acceptor, from PEM files (ALPN `postgresql`, which libpq 17 asks for).
pub fn tls(cfg: &TlsConfig) -> Result<pgwire::tokio::TlsAcceptor, TlsError> {
    hexpulse_common::serve::tls_acceptor(cfg, &[b"postgresql"])
}

/// The login: a cleartext password that is a token (over TLS where the door has it, which it then
/// requires; else keep the door on loopback or a private network).
struct TokenLogin {
    gate: Arc<Gate>,
    require_tls: bool,
    cancels: Arc<Cancels>,
    keys: RandomPidSecretKeyGenerator,
    parameters: DefaultServerParameterProvider,
}

/// The user name that logs in without a password, as an anonymous caller.
pub const ANONYMOUS: &str = "anonymous";

impl TokenLogin {
    /// Admits `credential` for the `sql` group, and opens the session (or refuses it, FATAL).
    async fn login<C>(&self, client: &mut C, credential: Credential<'_>) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let peer = format!(
            "ip:{}",
            hexpulse_common::ratelimit::client_key(client.socket_addr().ip())
        );
        let caller = self
            .gate
            .admit(credential, "sql", &peer)
            .map_err(|e| pg_error(&e, true))?;
        tracing::debug!(caller = caller.label(), %peer, "postgres login");
        let (pid, key) = self.keys.generate(&*client);
        client.set_pid_and_secret_key(pid, key.clone());
        // The cancel the connection's hang-up watch holds (see `serve`).
        let current = (self.cancels.by_peer.lock().expect("lock"))
            .get(&client.socket_addr())
            .cloned()
            .unwrap_or_default();
        self.cancels
            .by_pid
            .lock()
            .expect("lock")
            .insert(pid, (key, current.clone()));
        let session = Session {
            allow_raw: self.gate.allows_raw(&caller),
            caller,
            peer,
            current,
            _registered: Registered {
                cancels: self.cancels.clone(),
                pid,
            },
        };
        client.session_extensions().insert(session);
        finish_authentication(client, &self.parameters).await
    }
}

#[async_trait]
impl StartupHandler for TokenLogin {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                if self.require_tls && !client.is_secure() {
                    // Before any password: a token must not cross the network in clear text.
                    let mut info = ErrorInfo::new(
                        "FATAL".into(),
                        "28000".into(),
                        "this door requires TLS: connect with sslmode=require (or verify-full \
                         with the server's certificate)"
                            .into(),
                    );
                    info.detail = Some("hexpulse code: tls_required, SQLSTATE 28000".into());
                    return Err(PgWireError::UserError(Box::new(info)));
                }
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                // The user `anonymous` logs in without a password where the `sql` group is
                // public (libpq never sends an empty password); anyone else gives a token.
                if client.metadata().get("user").map(String::as_str) == Some(ANONYMOUS) {
                    self.login(client, Credential::Header(None)).await?;
                } else {
                    client.set_state(PgWireConnectionState::AuthenticationInProgress);
                    client
                        .send(PgWireBackendMessage::Authentication(
                            Authentication::CleartextPassword,
                        ))
                        .await?;
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                self.login(client, Credential::Token(&pwd.password)).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// A cancel request (its own connection, with the process id and key the login gave).
struct CancelByKey {
    cancels: Arc<Cancels>,
}

#[async_trait]
impl CancelHandler for CancelByKey {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let by_pid = self.cancels.by_pid.lock().expect("lock");
        if let Some((key, current)) = by_pid.get(&request.pid)
            && key.eq_value(&request.secret_key)
        {
            current.lock().expect("lock").cancel();
        }
    }
}

/// A second handle on `socket`'s connection (a duplicated descriptor), for [`watch_hang_up`].
fn duplicate(socket: &tokio::net::TcpStream) -> std::io::Result<tokio::net::TcpStream> {
    use std::os::fd::AsFd;
    let fd = socket.as_fd().try_clone_to_owned()?;
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std)
}

/// Cancels the connection's running statement when the client hangs up: pgwire reads a connection
/// only between statements, so without this a client killed mid-statement would hold its query
/// slot until the answer's next row is written or the time limit. Peeks at the connection without
/// reading it: an end of stream or an error is the hang-up; bytes waiting (a client sending ahead)
/// are left to pgwire, and looked at again shortly.
async fn watch_hang_up(dup: tokio::net::TcpStream, current: Current) {
    let mut byte = [0u8; 1];
    loop {
        match dup.peek(&mut byte).await {
            Ok(0) | Err(_) => {
                current.lock().expect("lock").cancel();
                return;
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

/// The door's handlers, shared by every connection.
struct Door {
    login: Arc<TokenLogin>,
    queries: Arc<queries::Queries>,
    cancel: Arc<CancelByKey>,
}

impl PgWireServerHandlers for Door {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.login.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }
}

/// Binds `addr` and serves the door until `shutdown` (then open connections are closed); with
/// `tls`, only over TLS.
pub async fn serve(
    addr: SocketAddr,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    gate: Arc<Gate>,
    max_rows: usize,
    max_connections: usize,
    tasks: &mut Tasks,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let cancels = Arc::new(Cancels::default());
    let require_tls = tls.is_some();
    let mut parameters = DefaultServerParameterProvider::default();
    parameters.search_path = crate::catalog::SCHEMA.to_string();
    parameters.default_transaction_read_only = true;
    let door = Arc::new(Door {
        login: Arc::new(TokenLogin {
            gate: gate.clone(),
            require_tls,
            cancels: cancels.clone(),
            keys: RandomPidSecretKeyGenerator::default(),
            parameters,
        }),
        queries: Arc::new(queries::Queries::new(gate, max_rows)),
        cancel: Arc::new(CancelByKey {
            cancels: cancels.clone(),
        }),
    });
    let open = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    tasks.spawn("postgres-door", async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => a,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let (socket, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "postgres door: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Past the bound, a connection is closed as it arrives.
            let Ok(permit) = open.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "postgres door: too many connections");
                continue;
            };
            let _ = socket.set_nodelay(true);
            let (door, tls, cancels) = (door.clone(), tls.clone(), cancels.clone());
            connections.spawn(async move {
                let _permit = permit;
                let current = Current::default();
                cancels
                    .by_peer
                    .lock()
                    .expect("lock")
                    .insert(peer, current.clone());
                let watch = match duplicate(&socket) {
                    Ok(dup) => Some(AbortOnDrop(tokio::spawn(watch_hang_up(dup, current)))),
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "postgres door: no hang-up watch");
                        None
                    }
                };
                if let Err(e) = pgwire::tokio::process_socket(socket, tls, door).await {
                    tracing::debug!(%peer, error = %e, "postgres connection ended");
                }
                drop(watch);
                cancels.by_peer.lock().expect("lock").remove(&peer);
            });
        }
        // Dropping the set aborts the open connections.
    });
    tracing::info!(addr = %bound, tls = require_tls, "postgres door listening");
    Ok(bound)
}
