//! Who may connect, and how: SCRAM-SHA-256 passwords for the users configured at start
//! (`--user name:password`, `--users-file`) and for the roles created with `LOGIN PASSWORD`,
//! trust when no user is configured, TLS when a certificate and key are given. Configured
//! users are superusers; with none, the trusted default user `velocity` is, and a trusted
//! connection under a name that is no role acts as it.
//!
//! Promise: no statement runs on a connection before its authentication has finished;
//! `VelocityService` checks the `Authenticated` marker this module sets.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password, random_nonce};
use datafusion_postgres::pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, ServerParameterProvider, StartupHandler, finish_authentication,
    protocol_negotiation, save_startup_parameters_to_metadata,
};
use datafusion_postgres::pgwire::api::{
    ClientInfo, ConnectionHandle, ConnectionManager, PgWireConnectionState, PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
};
use datafusion_postgres::pgwire::error::{PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use futures::Sink;
use tokio_rustls::TlsAcceptor;

use super::error::{ServerError, SessionError};
use super::login_throttle::LoginThrottle;
use super::session::SessionRoles;
use crate::catalog::{Role, RoleSecret};
use crate::engine::Engine;

/// The superuser of a server without configured users.
pub const DEFAULT_USER: &str = "velocity";

/// PBKDF2 iterations for stored SCRAM secrets (Postgres' default).
const SCRAM_ITERATIONS: usize = 4096;

/// Process ids and cancel keys for all connections (one counter, so ids are unique).
static PIDS: LazyLock<Arc<RandomPidSecretKeyGenerator>> = LazyLock::new(Default::default);

/// Marker in a connection's session extensions: authentication has finished.
pub struct Authenticated;

/// What `version()` and the `server_version` parameter report: a Postgres version first,
/// so drivers that parse it keep working, then Velocity's own.
pub fn server_version() -> String {
    format!("16.6 (Velocity {})", env!("CARGO_PKG_VERSION"))
}

/// The full `SELECT version()` string.
pub fn version_string() -> String {
    format!("PostgreSQL {} on {}-{}", server_version(), std::env::consts::ARCH, std::env::consts::OS)
}

/// Parameters sent to clients after authentication (pgwire's defaults, Velocity's version).
pub struct Parameters(DefaultServerParameterProvider);

impl Default for Parameters {
    fn default() -> Self {
        let mut p = DefaultServerParameterProvider::default();
        p.server_version = server_version();
        Parameters(p)
    }
}

impl ServerParameterProvider for Parameters {
    fn server_parameters<C: ClientInfo>(&self, client: &C) -> Option<HashMap<String, String>> {
        self.0.server_parameters(client)
    }
}

/// The SCRAM-SHA-256 secret of `password` under a fresh salt.
pub fn scram_secret(password: &str) -> RoleSecret {
    let salt = random_nonce().into_bytes();
    let salted_password = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
    RoleSecret { salt, salted_password }
}

/// Users configured at start and their SCRAM secrets (salted passwords; the plain password
/// is not kept), in the order given: the first owns objects stored before objects had owners.
#[derive(Debug, Default, Clone)]
pub struct Users {
    roles: Vec<Role>,
}

impl Users {
    /// Add a user from `name:password` (the password may itself contain `:`).
    pub fn add_spec(&mut self, spec: &str) -> Result<(), ServerError> {
        let Some((name, password)) = spec.split_once(':') else {
            return Err(ServerError::Config(format!("user {spec:?}: expected name:password")));
        };
        if name.is_empty() {
            return Err(ServerError::Config(format!("user {spec:?}: empty name")));
        }
        let role = Role {
            name: name.to_string(),
            superuser: true,
            login: true,
            secret: Some(scram_secret(password)),
            configured: true,
            ..Role::default()
        };
        match self.roles.iter_mut().find(|r| r.name == name) {
            Some(existing) => *existing = role,
            None => self.roles.push(role),
        }
        Ok(())
    }

    /// Add every `name:password` line of a file.
    pub fn add_file(&mut self, path: &Path) -> Result<(), ServerError> {
        let text = std::fs::read_to_string(path).map_err(|e| ServerError::Config(format!("users file {}: {e}", path.display())))?;
        self.add_lines(&text).map_err(|e| ServerError::Config(format!("users file {}: {e}", path.display())))
    }

    /// Add every `name:password` line of `text` (blank lines and `#` comments are skipped).
    pub fn add_lines(&mut self, text: &str) -> Result<(), ServerError> {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            self.add_spec(line)?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.roles.is_empty()
    }
}

/// The SCRAM secrets of the roles that may log in with a password: configured users and
/// roles created `WITH LOGIN PASSWORD`, looked up when a connection authenticates.
struct RoleSecrets(Engine);

impl Debug for RoleSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoleSecrets")
    }
}

#[async_trait]
impl AuthSource for RoleSecrets {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let secret = login.user().and_then(|u| {
            let catalog = self.0.catalog();
            catalog.role(u).filter(|r| r.login).and_then(|r| r.secret.clone())
        });
        match secret {
            Some(secret) => Ok(Password::new(Some(secret.salt), secret.salted_password)),
            // An unknown user gets a secret nobody knows, so the exchange fails the same way
            // (28P01) as a wrong password and does not reveal which users exist.
            None => Ok(Password::new(Some(random_nonce().into_bytes()), random_nonce().into_bytes())),
        }
    }
}

/// How connections are accepted: the users (none: trust) and the TLS setup.
#[derive(Default, Clone)]
pub struct Access {
    users: Users,
    /// The catalog's roles, once the server has opened its data directory.
    engine: Option<Engine>,
    /// Every authenticated connection by process id and secret key, so a CancelRequest
    /// (sent on a new connection) finds the statement to cancel.
    connections: Arc<ConnectionManager>,
    tls: Option<TlsAcceptor>,
    /// PEM of the server certificate, for SCRAM channel binding (SCRAM-SHA-256-PLUS).
    cert_pem: Option<Vec<u8>>,
    throttle: Arc<LoginThrottle>,
}

impl Access {
    /// Require SCRAM-SHA-256 passwords for these users; no users means trust.
    pub fn with_users(mut self, users: Users) -> Self {
        self.users = users;
        self
    }

    /// The superusers configured at start: the users given, or the trusted `velocity`.
    pub fn configured_roles(&self) -> Vec<Role> {
        if self.users.is_empty() {
            vec![Role { name: DEFAULT_USER.into(), superuser: true, login: true, secret: None, configured: true, ..Role::default() }]
        } else {
            self.users.roles.clone()
        }
    }

    /// Look roles up in `engine`'s catalog (passwords, who a trusted name is).
    pub fn with_catalog(mut self, engine: Engine) -> Self {
        self.engine = Some(engine);
        self
    }

    /// Offer TLS with this certificate chain and private key (PEM files).
    pub fn with_tls(mut self, cert: &Path, key: &Path) -> Result<Self, ServerError> {
        use tokio_rustls::rustls;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cert_pem = std::fs::read(cert).map_err(|e| ServerError::Config(format!("--tls-cert {}: {e}", cert.display())))?;
        let key_pem = std::fs::read(key).map_err(|e| ServerError::Config(format!("--tls-key {}: {e}", key.display())))?;
        let certs = rustls_pemfile::certs(&mut cert_pem.as_slice()).collect::<Result<Vec<_>, _>>()?;
        if certs.is_empty() {
            return Err(ServerError::Config(format!("--tls-cert {}: no certificate found", cert.display())));
        }
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())?
            .ok_or_else(|| ServerError::Config(format!("--tls-key {}: no private key found", key.display())))?;
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| ServerError::Config(format!("--tls-cert/--tls-key: {e}")))?;
        self.tls = Some(TlsAcceptor::from(Arc::new(config)));
        self.cert_pem = Some(cert_pem);
        Ok(self)
    }

    pub fn tls(&self) -> Option<TlsAcceptor> {
        self.tls.clone()
    }

    /// The registry CancelRequests are matched against.
    pub fn connections(&self) -> Arc<ConnectionManager> {
        self.connections.clone()
    }

    pub fn requires_password(&self) -> bool {
        !self.users.is_empty()
    }

    /// A startup handler for one new connection (SCRAM keeps per-connection state).
    pub fn startup(&self) -> Startup {
        let engine = self.engine.clone().expect("the server attaches its catalog before it accepts connections");
        let kind = if self.users.is_empty() {
            StartupKind::Trust(Parameters::default(), self.connections.clone())
        } else {
            let secrets = Arc::new(RoleSecrets(engine.clone()));
            StartupKind::Scram {
                plain: scram_handler(&secrets, None, &self.connections),
                // Channel binding (SCRAM-SHA-256-PLUS) is offered only over TLS: libpq refuses
                // a server that offers it on a plain connection.
                tls: scram_handler(&secrets, self.cert_pem.as_deref(), &self.connections),
            }
        };
        Startup { kind, engine, throttle: self.throttle.clone() }
    }
}

fn scram_handler(
    secrets: &Arc<RoleSecrets>,
    cert_pem: Option<&[u8]>,
    connections: &Arc<ConnectionManager>,
) -> SASLAuthStartupHandler<Parameters> {
    let mut scram = ScramAuth::new(secrets.clone());
    scram.set_iterations(SCRAM_ITERATIONS);
    if let Some(pem) = cert_pem
        && let Err(e) = scram.configure_certificate(pem)
    {
        tracing::warn!("SCRAM channel binding disabled: {e}");
    }
    let pids: Arc<dyn PidSecretKeyGenerator> = PIDS.clone();
    SASLAuthStartupHandler::new(Arc::new(Parameters::default()))
        .with_scram(scram)
        .with_pid_secret_key_generator(pids)
        .with_connection_manager(connections.clone())
}

/// The startup phase of one connection.
pub struct Startup {
    kind: StartupKind,
    engine: Engine,
    throttle: Arc<LoginThrottle>,
}

enum StartupKind {
    Trust(Parameters, Arc<ConnectionManager>),
    /// One handler per transport; a connection uses the one that matches it throughout.
    Scram {
        plain: SASLAuthStartupHandler<Parameters>,
        tls: SASLAuthStartupHandler<Parameters>,
    },
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match &self.kind {
            StartupKind::Trust(parameters, connections) => {
                if let PgWireFrontendMessage::Startup(ref startup) = message {
                    protocol_negotiation(client, startup).await?;
                    save_startup_parameters_to_metadata(client, startup);
                    // As in Postgres, a role without LOGIN may not connect; a name that is
                    // no role is the trusted default user.
                    let name = {
                        let catalog = self.engine.catalog();
                        match catalog.role(startup.parameters.get("user").map_or("", String::as_str)) {
                            Some(role) if !role.login => return Err(SessionError::LoginNotPermitted(role.name.clone()).into()),
                            Some(role) => role.name.clone(),
                            None => catalog.bootstrap_role().to_string(),
                        }
                    };
                    client.session_extensions().insert(SessionRoles::new(&name));
                    let (pid, secret) = PIDS.generate(client);
                    client.set_pid_and_secret_key(pid, secret.clone());
                    // The guard unregisters the connection when its session ends.
                    let (handle, guard) = connections.register(pid, secret);
                    client.session_extensions().insert::<Arc<ConnectionHandle>>(handle);
                    client.session_extensions().insert(guard);
                    finish_authentication(client, parameters).await?;
                }
            }
            StartupKind::Scram { plain, tls } => {
                let handler = if client.is_secure() { tls } else { plain };
                let ip = client.socket_addr().ip();
                if matches!(message, PgWireFrontendMessage::Startup(_)) {
                    self.throttle.wait_turn(ip).await;
                }
                let outcome = handler.on_startup(client, message).await;
                if let Err(PgWireError::InvalidPassword(_)) = &outcome {
                    self.throttle.failed(ip);
                }
                outcome?;
                if matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
                    self.throttle.succeeded(ip);
                    let user = client.metadata().get("user").cloned().unwrap_or_default();
                    client.session_extensions().insert(SessionRoles::new(&user));
                }
            }
        }
        if matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            client.session_extensions().insert(Authenticated);
        }
        Ok(())
    }
}

/// The error for a statement on a connection that has not authenticated.
pub fn not_authenticated() -> PgWireError {
    super::error::SessionError::NotAuthenticated.into()
}
