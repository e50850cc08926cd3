//! cdc-sentinel: the `[redis.sentinel]` settings (docs/operations.md) and
//! how redis-rs reaches the Sentinels and the primary they name, shared by
//! the daemon and the Rust reader (readers/spec.md section 14) so both give
//! every field the same meaning.

/// The primary named by Redis Sentinel. `Debug` never shows a password.
#[derive(Clone)]
pub struct SentinelSettings {
    /// The name the Sentinels monitor (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// `(host, port)` of each Sentinel; three or more in production.
    pub addresses: Vec<(String, u16)>,
    /// The data nodes' (primary's and replicas') ACL user and password.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The Sentinels' own.
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    /// TLS to the Sentinels and to the data nodes (certificates verified).
    pub tls: bool,
    /// The database the version records live in.
    pub db: i64,
}

// By hand: the passwords must never reach a log line or an error.
impl std::fmt::Debug for SentinelSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelSettings")
            .field("master_name", &self.master_name)
            .field("addresses", &self.addresses)
            .field("username", &self.username)
            .field("sentinel_username", &self.sentinel_username)
            .field("tls", &self.tls)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

/// Settings that cannot name a primary: why, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

impl SentinelSettings {
    /// The master name and the Sentinels as `"host:port"` (the form of
    /// `CDC_REDIS_SENTINELS`); no credentials, no TLS, database 0.
    pub fn new<S: AsRef<str>>(
        master_name: impl Into<String>,
        addresses: impl IntoIterator<Item = S>,
    ) -> Result<Self, Invalid> {
        let addresses = addresses
            .into_iter()
            .map(|a| parse_address(a.as_ref()))
            .collect::<Result<_, _>>()?;
        let settings = SentinelSettings {
            master_name: master_name.into(),
            addresses,
            username: None,
            password: None,
            sentinel_username: None,
            sentinel_password: None,
            tls: false,
            db: 0,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// A master name, at least one Sentinel, a database from 0.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.master_name.is_empty() {
            return Err(Invalid("sentinel: master_name is empty".into()));
        }
        if self.addresses.is_empty() {
            return Err(Invalid("sentinel: addresses is empty".into()));
        }
        if self.db < 0 {
            return Err(Invalid(format!("sentinel: db {} is negative", self.db)));
        }
        Ok(())
    }

    /// Where one node is, with TLS when the settings ask for it.
    pub fn address(&self, host: &str, port: u16) -> redis::ConnectionAddr {
        match self.tls {
            true => redis::ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            },
            false => redis::ConnectionAddr::Tcp(host.to_owned(), port),
        }
    }

    /// redis-rs's Sentinel client, asked for the primary only (never a
    /// replica), with both sets of credentials; the caller adds its socket
    /// settings and builds it.
    pub fn client_builder(&self) -> redis::RedisResult<redis::sentinel::SentinelClientBuilder> {
        let addresses = self.addresses.iter().map(|(host, port)| self.address(host, *port));
        let mut builder = redis::sentinel::SentinelClientBuilder::new(
            addresses,
            &self.master_name,
            redis::sentinel::SentinelServerType::Master,
        )?
        .set_client_to_redis_db(self.db);
        if self.tls {
            builder = builder
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        }
        if let Some(user) = &self.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(user) = &self.sentinel_username {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = &self.sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        Ok(builder)
    }

    /// How to reach one Sentinel: its address, the Sentinels' credentials
    /// and TLS.
    pub fn sentinel_connection_info(&self, host: &str, port: u16) -> redis::RedisResult<redis::ConnectionInfo> {
        let mut settings = redis::RedisConnectionInfo::default();
        if let Some(user) = &self.sentinel_username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.sentinel_password {
            settings = settings.set_password(password);
        }
        Ok(redis::IntoConnectionInfo::into_connection_info(self.address(host, port))?.set_redis_settings(settings))
    }
}

/// `host:port`, the host possibly in brackets (IPv6).
fn parse_address(address: &str) -> Result<(String, u16), Invalid> {
    address
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?)))
        .filter(|(host, port): &(String, u16)| !host.is_empty() && *port > 0)
        .ok_or_else(|| Invalid(format!("sentinel: address {address:?} is not \"host:port\"")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn debug_hides_passwords_and_addresses_are_checked() {
        let mut s = SentinelSettings::new("m", ["h:1", "[::1]:2"]).unwrap();
        assert_eq!(s.addresses, vec![("h".to_owned(), 1), ("::1".to_owned(), 2)]);
        s.password = Some("data-secret".into());
        s.sentinel_password = Some("sentinel-secret".into());
        let printed = format!("{s:?} {s:#?}");
        assert!(!printed.contains("secret"), "{printed}");
        assert!(printed.contains("\"m\""), "{printed}");
        assert!(SentinelSettings::new("m", ["h"]).is_err());
        assert!(SentinelSettings::new("m", ["h:0"]).is_err());
        assert!(SentinelSettings::new("", ["h:1"]).is_err());
        assert!(SentinelSettings::new("m", Vec::<String>::new()).is_err());
    }
}
