//! Environment variables that override addresses and secrets, so the same
//! checked-in file serves every environment. Each section reads its own;
//! they are listed together here so that the whole set is on one screen.

pub(crate) const ENV_KAFKA_BROKERS: &str = "CDC_KAFKA_BROKERS";
pub(crate) const ENV_KAFKA_GROUP: &str = "CDC_KAFKA_GROUP";
/// librdkafka's `sasl.username` and `sasl.password` for every Kafka client,
/// over `[source.librdkafka]`'s: the mechanism and the protocol stay in the file.
pub(crate) const ENV_KAFKA_SASL_USERNAME: &str = "CDC_KAFKA_SASL_USERNAME";
pub(crate) const ENV_KAFKA_SASL_PASSWORD: &str = "CDC_KAFKA_SASL_PASSWORD";
pub(crate) const ENV_REDIS_URL: &str = "CDC_REDIS_URL";
/// With `[redis.sentinel]`: the Sentinels (comma-separated host:port), the
/// master name, the data nodes' password and the Sentinels' own.
pub(crate) const ENV_REDIS_SENTINELS: &str = "CDC_REDIS_SENTINELS";
pub(crate) const ENV_REDIS_SENTINEL_MASTER: &str = "CDC_REDIS_SENTINEL_MASTER";
pub(crate) const ENV_REDIS_PASSWORD: &str = "CDC_REDIS_PASSWORD";
pub(crate) const ENV_REDIS_SENTINEL_PASSWORD: &str = "CDC_REDIS_SENTINEL_PASSWORD";
pub(crate) const ENV_ADMIN_LISTEN: &str = "CDC_ADMIN_LISTEN";
pub(crate) const ENV_DEAD_LETTERS_URL: &str = "CDC_DEAD_LETTERS_URL";
pub(crate) const ENV_LOOKUP_URL: &str = "CDC_LOOKUP_URL";
pub(crate) const ENV_SCHEMA_REGISTRY_URL: &str = "CDC_SCHEMA_REGISTRY_URL";
pub(crate) const ENV_SCHEMA_REGISTRY_USER: &str = "CDC_SCHEMA_REGISTRY_USER";
pub(crate) const ENV_SCHEMA_REGISTRY_PASSWORD: &str = "CDC_SCHEMA_REGISTRY_PASSWORD";
pub(crate) const ENV_INSTANCE_ID: &str = "CDC_INSTANCE_ID";
pub(crate) const ENV_CONNECT_URL: &str = "CDC_CONNECT_URL";
pub(crate) const ENV_GROUP_PROTOCOL: &str = "CDC_GROUP_PROTOCOL";
/// `true` or `false`: overrides `[source] leave_group_on_stop`.
pub(crate) const ENV_LEAVE_GROUP_ON_STOP: &str = "CDC_LEAVE_GROUP_ON_STOP";

/// Where overrides come from: `std::env::var` in the binary, a closure in
/// tests. None means "not set".
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;
