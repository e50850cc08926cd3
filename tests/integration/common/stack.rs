//! The local stack's addresses (environment variables with loopback
//! defaults, as `scripts/stack env` exports them), PostgreSQL access, and a
//! TCP forwarder a test can cut to make a dependency go away.

use std::time::Duration;

use super::unique;

/// Kafka Connect's REST API of the stack.
pub fn connect_url() -> String {
    std::env::var("CDC_CONNECT_URL").unwrap_or_else(|_| "http://127.0.0.1:8083".into())
}

pub fn kafka_brokers() -> String {
    std::env::var("CDC_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn redis_url() -> String {
    std::env::var("CDC_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn pg_url() -> String {
    std::env::var("CDC_PG_URL").unwrap_or_else(|_| "postgres://cdc:cdc@127.0.0.1:5432/shop".into())
}

/// Debezium's topic.prefix in the stack's connector.
pub fn topic_prefix() -> String {
    std::env::var("CDC_TOPIC_PREFIX").unwrap_or_else(|_| "shop".into())
}

pub async fn pg() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&pg_url())
        .await
        .expect("PostgreSQL from scripts/stack up is reachable (CDC_PG_URL)")
}

/// The stack's superuser (trust authentication on loopback), for what the
/// replication role may not do, such as creating a schema publication.
pub async fn pg_admin() -> sqlx::PgPool {
    let url = format!("postgres://postgres@{}/shop", pg_address());
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("the stack's PostgreSQL superuser (scripts/stack up)")
}

pub async fn sql(pool: &sqlx::PgPool, statements: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(statements.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("SQL failed: {e}\n{statements}"));
}

/// host:port of a postgres:// URL.
pub fn pg_address() -> String {
    let url = pg_url();
    let after_at = url.rsplit('@').next().unwrap();
    after_at.split('/').next().unwrap().to_owned()
}

/// A dead-letter URL through `address` and a schema of the test's own
/// (`[dead_letters] schema`; `migrate` creates it).
pub fn dead_letter_url(address: &str) -> (String, String) {
    (pg_url().replace(&pg_address(), address), unique("dl"))
}

/// A TCP forwarder on loopback that a test can cut and restore, to make a
/// dependency (here the dead-letter database) go away and come back.
pub struct Proxy {
    pub port: u16,
    target: String,
    stop: Option<tokio_util::sync::CancellationToken>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        // Bound on port 0 and kept: nothing can take the port in between.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("proxy port");
        let mut proxy = Proxy {
            port: listener.local_addr().expect("proxy address").port(),
            target: target.to_owned(),
            stop: None,
        };
        proxy.serve(listener);
        proxy
    }

    /// Listens again on the same port after `down`.
    pub async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("proxy port");
        self.serve(listener);
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let stop = tokio_util::sync::CancellationToken::new();
        let target = self.target.clone();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        let target = target.clone();
                        let token = token.clone();
                        tokio::spawn(async move {
                            let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                            tokio::select! {
                                _ = token.cancelled() => {}
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            }
                        });
                    }
                }
            }
        });
        self.stop = Some(stop);
    }

    /// Closes the listener and every open connection.
    pub async fn down(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
