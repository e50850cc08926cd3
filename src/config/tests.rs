//! Whole files through `parse`: each refusal names the file, the line and
//! the field exactly, and each default and override lands where it should.

use super::admin::{default_probe_interval, DEFAULT_ADMIN_LISTEN};
use super::dead_letters::DEFAULT_DEAD_LETTER_SCHEMA;
use super::entity::DEFAULT_FANOUT_MAX_ROWS;
use super::env::{
    ENV_ADMIN_LISTEN, ENV_CONNECT_URL, ENV_DEAD_LETTERS_URL, ENV_GROUP_PROTOCOL, ENV_INSTANCE_ID, ENV_KAFKA_BROKERS,
    ENV_LEAVE_GROUP_ON_STOP, ENV_LOOKUP_URL, ENV_REDIS_URL, ENV_SCHEMA_REGISTRY_PASSWORD, ENV_SCHEMA_REGISTRY_URL,
};
use super::plan::{
    default_route_workers, DEFAULT_EVENTUAL_LINGER, DEFAULT_MAX_BATCH_RECORDS, DEFAULT_MAX_ROUTE_WORKERS,
};
use super::redis::{DEFAULT_MAX_RETRY_BACKOFF, DEFAULT_WAIT_TIMEOUT};
use super::*;
use crate::graph::Consistency;

const BASE: &str = r#"
[source]
brokers = "127.0.0.1:9092"
group_id = "g"
topics = ["shop.public.products"]

[redis]
url = "redis://127.0.0.1:6379"
version_ttl = "1h"

[[entity]]
table = "public.products"
namespace = "product"
max_cache_ttl = "10m"
keys = ["product:{id}"]
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn error_of(text: &str) -> String {
    parse("shop.toml", text, &no_env).unwrap_err().to_string()
}

#[test]
fn base_config_validates_with_defaults() {
    let s = parse("shop.toml", BASE, &no_env).unwrap();
    assert_eq!(s.redis.version_prefix, "ver:");
    assert_eq!(s.plan.max_batch_records, DEFAULT_MAX_BATCH_RECORDS);
    assert_eq!(s.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
    assert_eq!(s.graph.entities().len(), 1);
}

#[test]
fn unknown_field_names_file_line_and_field() {
    let text = BASE.replace("group_id = \"g\"", "group_id = \"g\"\ngroup = \"oops\"");
    let msg = error_of(&text);
    assert!(msg.starts_with("shop.toml:5:"), "{msg}");
    assert!(msg.contains("unknown field `group`"), "{msg}");
}

#[test]
fn syntax_error_names_line() {
    let msg = error_of(&BASE.replace("version_ttl = \"1h\"", "version_ttl = "));
    assert!(msg.starts_with("shop.toml:9:"), "{msg}");
}

#[test]
fn bad_duration_names_field_and_expectation() {
    let msg = error_of(&BASE.replace("max_cache_ttl = \"10m\"", "max_cache_ttl = \"ten minutes\""));
    assert!(
        msg.starts_with("shop.toml:14: field `entity[0].max_cache_ttl`"),
        "{msg}"
    );
    assert!(msg.contains("expected a duration"), "{msg}");
}

#[test]
fn version_ttl_shorter_than_cache_ttl_is_refused() {
    let msg = error_of(&BASE.replace("version_ttl = \"1h\"", "version_ttl = \"5m\""));
    assert!(msg.contains("field `entity[0].max_cache_ttl`"), "{msg}");
    assert!(msg.contains("longer than redis.version_ttl"), "{msg}");
}

#[test]
fn bad_template_is_refused() {
    let msg = error_of(&BASE.replace("product:{id}", "product:{id"));
    assert!(msg.contains("field `entity[0].keys`"), "{msg}");
    assert!(msg.contains("unclosed"), "{msg}");
}

#[test]
fn bad_consistency_is_refused() {
    let msg = error_of(&BASE.replace(
        "namespace = \"product\"",
        "namespace = \"product\"\nconsistency = \"weak\"",
    ));
    assert!(msg.contains("expected \"strong\" or \"eventual\""), "{msg}");
}

#[test]
fn topics_and_regex_are_exclusive() {
    let msg = error_of(&BASE.replace("topics = [", "topic_regex = \"shop\\\\..*\"\ntopics = ["));
    assert!(msg.contains("not both"), "{msg}");
}

#[test]
fn instance_id_from_file_or_environment_and_an_empty_environment_turns_it_off() {
    let s = parse("shop.toml", BASE, &no_env).unwrap();
    assert_eq!(s.source.instance_id, None);
    let text = BASE.replace("group_id = \"g\"", "group_id = \"g\"\ninstance_id = \"auto\"");
    let s = parse("shop.toml", &text, &no_env).unwrap();
    let auto = s.source.instance_id.unwrap();
    assert!(auto.ends_with("-9799"), "{auto}");
    let env = |value: &'static str| move |name: &str| (name == ENV_INSTANCE_ID).then(|| value.to_owned());
    let s = parse("shop.toml", &text, &env("replica-7")).unwrap();
    assert_eq!(s.source.instance_id.as_deref(), Some("replica-7"));
    let s = parse("shop.toml", &text, &env("")).unwrap();
    assert_eq!(s.source.instance_id, None, "an empty CDC_INSTANCE_ID turns it off");
    let empty = BASE.replace("group_id = \"g\"", "group_id = \"g\"\ninstance_id = \"\"");
    let msg = error_of(&empty);
    assert!(msg.contains("field `source.instance_id`"), "{msg}");
}

#[test]
fn group_protocol_defaults_to_classic_and_takes_consumer() {
    let s = parse("shop.toml", BASE, &no_env).unwrap();
    assert_eq!(s.source.group_protocol, GroupProtocol::Classic);
    let text = BASE.replace("group_id = \"g\"", "group_id = \"g\"\ngroup_protocol = \"consumer\"");
    let s = parse("shop.toml", &text, &no_env).unwrap();
    assert_eq!(s.source.group_protocol, GroupProtocol::Consumer);
    let env = |name: &str| (name == ENV_GROUP_PROTOCOL).then(|| "classic".to_owned());
    let s = parse("shop.toml", &text, &env).unwrap();
    assert_eq!(s.source.group_protocol, GroupProtocol::Classic, "the environment wins");
}

#[test]
fn unknown_group_protocol_names_line_and_field() {
    let msg = error_of(&BASE.replace("group_id = \"g\"", "group_id = \"g\"\ngroup_protocol = \"kip848\""));
    assert!(msg.starts_with("shop.toml:5: field `source.group_protocol`"), "{msg}");
    assert!(msg.contains("\"classic\" or \"consumer\""), "{msg}");
}

#[test]
fn leave_group_on_stop_is_off_by_default_and_set_by_file_or_environment() {
    let s = parse("shop.toml", BASE, &no_env).unwrap();
    assert!(
        !s.source.leave_group_on_stop,
        "static members keep their partitions across restarts by default"
    );
    let on = BASE.replace("group_id = \"g\"", "group_id = \"g\"\nleave_group_on_stop = true");
    assert!(parse("shop.toml", &on, &no_env).unwrap().source.leave_group_on_stop);
    let env = |value: &'static str| move |name: &str| (name == ENV_LEAVE_GROUP_ON_STOP).then(|| value.to_owned());
    assert!(
        parse("shop.toml", BASE, &env("true"))
            .unwrap()
            .source
            .leave_group_on_stop
    );
    let s = parse("shop.toml", &on, &env("false")).unwrap();
    assert!(!s.source.leave_group_on_stop, "the environment wins");
    let msg = parse("shop.toml", &on, &env("yes")).unwrap_err().to_string();
    assert!(
        msg.starts_with("shop.toml:5: field `source.leave_group_on_stop`"),
        "{msg}"
    );
    assert!(
        msg.contains("CDC_LEAVE_GROUP_ON_STOP must be \"true\" or \"false\", got \"yes\""),
        "{msg}"
    );
    let msg = error_of(&BASE.replace("group_id = \"g\"", "group_id = \"g\"\nleave_group_on_stop = \"yes\""));
    assert!(msg.starts_with("shop.toml:5:"), "{msg}");
}

#[test]
fn leave_group_on_stop_is_refused_for_a_static_member_of_the_consumer_protocol() {
    let text = BASE.replace(
        "group_id = \"g\"",
        "group_id = \"g\"\ngroup_protocol = \"consumer\"\ninstance_id = \"replica-1\"\nleave_group_on_stop = true",
    );
    let msg = error_of(&text);
    assert!(
        msg.starts_with("shop.toml:7: field `source.leave_group_on_stop`"),
        "{msg}"
    );
    assert!(msg.contains("group_protocol = \"consumer\""), "{msg}");
    // A dynamic member of the consumer protocol leaves for good anyway.
    let dynamic = |name: &str| (name == ENV_INSTANCE_ID).then(String::new);
    assert!(parse("shop.toml", &text, &dynamic).unwrap().source.leave_group_on_stop);
    // The classic protocol honours it.
    let classic = text.replace("\"consumer\"", "\"classic\"");
    assert!(
        parse("shop.toml", &classic, &no_env)
            .unwrap()
            .source
            .leave_group_on_stop
    );
}

#[test]
fn classic_only_settings_are_refused_with_the_consumer_protocol() {
    let text = BASE.replace(
        "topics = [\"shop.public.products\"]",
        "topics = [\"shop.public.products\"]\ngroup_protocol = \"consumer\"\nlibrdkafka = { \"session.timeout.ms\" = \"10000\" }",
    );
    let msg = error_of(&text);
    assert!(
        msg.starts_with("shop.toml:7: field `source.librdkafka.session.timeout.ms`"),
        "{msg}"
    );
    // The same setting is fine with the classic protocol.
    parse("shop.toml", &text.replace("\"consumer\"", "\"classic\""), &no_env).unwrap();
    let msg = error_of(&BASE.replace(
        "topics = [\"shop.public.products\"]",
        "topics = [\"shop.public.products\"]\nlibrdkafka = { \"group.protocol\" = \"consumer\" }",
    ));
    assert!(msg.contains("source.librdkafka.group.protocol"), "{msg}");
}

#[test]
fn forced_librdkafka_setting_is_refused() {
    let msg = error_of(&BASE.replace(
        "topics = [\"shop.public.products\"]",
        "topics = [\"shop.public.products\"]\nlibrdkafka = { \"enable.auto.offset.store\" = \"true\" }",
    ));
    assert!(msg.contains("source.librdkafka.enable.auto.offset.store"), "{msg}");
}

#[test]
fn duplicate_table_is_refused() {
    let text = format!("{BASE}\n[[entity]]\ntable = \"public.products\"\nkeys = [\"p:{{id}}\"]\n");
    let msg = error_of(&text);
    assert!(msg.contains("declared twice"), "{msg}");
}

#[test]
fn fanout_needs_a_lookup_database_and_matching_binds() {
    let fanout = "\n[[entity.fanout]]\nquery = \"SELECT id FROM p WHERE c = $1 AND d = $2\"\nbind = [\"id\"]\nkeys = [\"p:{id}\"]\n";
    let msg = error_of(&format!("{BASE}{fanout}"));
    assert!(
        msg.contains("entity[0].fanout[0].query") && msg.contains("[lookup] url"),
        "{msg}"
    );
    let with_lookup = format!(
        "{}\n[lookup]\nurl = \"postgres://h/db\"\n{}{fanout}",
        BASE.split("[[entity]]").next().unwrap(),
        &BASE[BASE.find("[[entity]]").unwrap()..]
    );
    let msg = error_of(&with_lookup);
    assert!(
        msg.contains("entity[0].fanout[0].bind") && msg.contains("1 bind column(s)"),
        "{msg}"
    );
}

#[test]
fn environment_overrides_addresses() {
    let env = |name: &str| match name {
        ENV_REDIS_URL => Some("redis://:secret@10.1.1.1:6380".to_owned()),
        ENV_KAFKA_BROKERS => Some("k1:9092".to_owned()),
        _ => None,
    };
    let s = parse("shop.toml", BASE, &env).unwrap();
    assert_eq!(s.source.brokers, "k1:9092");
    assert_eq!(s.redis.url, "redis://:secret@10.1.1.1:6380");
}

#[test]
fn the_environment_gives_the_sasl_credentials_over_the_file() {
    let text = BASE.replace(
        "topics = [\"shop.public.products\"]",
        "topics = [\"shop.public.products\"]\nlibrdkafka = { \"security.protocol\" = \"SASL_SSL\", \"sasl.mechanism\" = \"SCRAM-SHA-512\", \"sasl.username\" = \"from-file\", \"sasl.password\" = \"FileSecret\" }",
    );
    let env = |name: &str| match name {
        "CDC_KAFKA_SASL_USERNAME" => Some("from-env".to_owned()),
        "CDC_KAFKA_SASL_PASSWORD" => Some("EnvSecret".to_owned()),
        _ => None,
    };
    let s = parse("shop.toml", &text, &env).unwrap();
    let setting = |name: &str| s.source.librdkafka.get(name).map(String::as_str);
    assert_eq!(setting("sasl.username"), Some("from-env"));
    assert_eq!(setting("sasl.password"), Some("EnvSecret"));
    assert_eq!(
        setting("sasl.mechanism"),
        Some("SCRAM-SHA-512"),
        "the rest of the file's passthrough stays"
    );

    // An empty variable is unset: the file's value stays.
    let empty = |name: &str| (name == "CDC_KAFKA_SASL_PASSWORD").then(String::new);
    let s = parse("shop.toml", &text, &empty).unwrap();
    assert_eq!(
        s.source.librdkafka.get("sasl.password").map(String::as_str),
        Some("FileSecret")
    );

    // Without a passthrough section, the variables alone add the settings.
    let s = parse("shop.toml", BASE, &env).unwrap();
    assert_eq!(
        s.source.librdkafka.get("sasl.password").map(String::as_str),
        Some("EnvSecret")
    );
}

#[test]
fn regex_subscription_is_anchored() {
    let text = BASE.replace(
        "topics = [\"shop.public.products\"]",
        "topic_regex = \"shop\\\\.public\\\\..*\"",
    );
    let s = parse("shop.toml", &text, &no_env).unwrap();
    assert_eq!(
        s.source.subscription.patterns(),
        vec!["^(shop\\.public\\..*)$".to_owned()]
    );
}

#[test]
fn a_regex_librdkafka_would_refuse_names_line_and_field() {
    let text = BASE.replace(
        "topics = [\"shop.public.products\"]",
        "topic_regex = \"shop\\\\.(?:products|reviews)\"",
    );
    let msg = error_of(&text);
    assert!(msg.starts_with("shop.toml:5: field `source.topic_regex`"), "{msg}");
    assert!(msg.contains("POSIX extended"), "{msg}");
}

#[test]
fn repeated_or_pattern_like_topics_are_refused() {
    let msg = error_of(&BASE.replace("topics = [\"shop.public.products\"]", "topics = [\"a\", \"b\", \"a\"]"));
    assert!(
        msg.contains("field `source.topics`") && msg.contains("\"a\" is listed twice"),
        "{msg}"
    );
    let msg = error_of(&BASE.replace("topics = [\"shop.public.products\"]", "topics = [\"^shop\"]"));
    assert!(msg.contains("patterns go in `topic_regex`"), "{msg}");
}

#[test]
fn dead_letters_get_their_own_schema() {
    let with = |section: &str| BASE.replace("[[entity]]", &format!("{section}\n[[entity]]"));
    let s = parse("shop.toml", &with("[dead_letters]\nurl = \"postgres://h/db\""), &no_env).unwrap();
    assert_eq!(
        s.dead_letters,
        Some(DeadLetterSettings {
            url: "postgres://h/db".into(),
            schema: DEFAULT_DEAD_LETTER_SCHEMA.into()
        })
    );
    let text = with("[dead_letters]\nurl = \"postgres://h/db\"\nschema = \"DL; drop\"");
    let msg = error_of(&text);
    assert!(msg.contains("field `dead_letters.schema`"), "{msg}");
    assert!(msg.contains("plain PostgreSQL identifier"), "{msg}");
}

/// One refusal per section, with the whole message: `(from, to, expected)`
/// replaces `from` in [`BASE`] by `to`, and `expected` is the error.
const SECTION_REFUSALS: &[(&str, &str, &str)] = &[
    (
        "url = \"redis://127.0.0.1:6379\"",
        "url = \"http://127.0.0.1:6379\"",
        "shop.toml:8: field `redis.url`: expected a redis:// or rediss:// URL, got \"http://127.0.0.1:6379\"",
    ),
    (
        "version_ttl = \"1h\"",
        "version_ttl = \"1h\"\nloss_check_interval = \"0s\"",
        "shop.toml:10: field `redis.loss_check_interval`: expected a positive duration",
    ),
    (
        "version_ttl = \"1h\"",
        "version_ttl = \"1h\"\nwait_timeout = \"0ms\"",
        "shop.toml:10: field `redis.wait_timeout`: expected at least 1ms (WAIT 0 blocks forever)",
    ),
    (
        "version_ttl = \"1h\"",
        "version_ttl = \"1h\"\ncluster = true\nwait_replicas = 1",
        "shop.toml:11: field `redis.wait_replicas`: not supported with cluster = true yet (WAIT answers for one node); use 0",
    ),
    (
        "[[entity]]",
        "[admin]\nlisten = \"localhost\"\n\n[[entity]]",
        "shop.toml:12: field `admin.listen`: expected host:port such as \"127.0.0.1:9799\", got \"localhost\"",
    ),
    (
        "[[entity]]",
        "[admin]\nlisten = \"127.0.0.1:0\"\nprobe_timeout = \"soon\"\n\n[[entity]]",
        "shop.toml:13: field `admin.probe_timeout`: expected a duration such as \"10m\" or \"30s\", got \"soon\" (expected number at 0)",
    ),
    (
        "[[entity]]",
        "[plan]\nmax_batch_bytes = 0\n\n[[entity]]",
        "shop.toml:12: field `plan.max_batch_bytes`: expected at least 1",
    ),
    (
        "[[entity]]",
        "[plan]\nescalate_above_lag = 0\n\n[[entity]]",
        "shop.toml:12: field `plan.escalate_above_lag`: expected a positive number of records",
    ),
    (
        "[[entity]]",
        "[plan]\nroute_workers = 0\n\n[[entity]]",
        "shop.toml:12: field `plan.route_workers`: expected 1 to 64 threads",
    ),
    (
        "[[entity]]",
        "[plan]\neventual_linger = \"10ms\"\nroute_workers = 65\n\n[[entity]]",
        "shop.toml:13: field `plan.route_workers`: expected 1 to 64 threads",
    ),
    (
        "[[entity]]",
        "[lookup]\nurl = \"postgres://x\"\nattempts = 0\n\n[[entity]]",
        "shop.toml:13: field `lookup.attempts`: expected at least 1",
    ),
    (
        "[[entity]]",
        "[avro]\ntimeout = \"5s\"\n\n[[entity]]",
        "shop.toml:11: field `avro`: expected `registry_url` or `schemas_dir` (or both)",
    ),
    (
        "[[entity]]",
        "[connect]\nurl = \"connect:8083\"\nconnectors = [\"c\"]\n\n[[entity]]",
        "shop.toml:12: field `connect.url`: expected an http:// or https:// URL of Kafka Connect's REST API, got \"connect:8083\"",
    ),
    (
        "[[entity]]",
        "[connect]\nurl = \"http://connect:8083\"\nconnectors = [\"c\", \"c\"]\n\n[[entity]]",
        "shop.toml:13: field `connect.connectors`: \"c\" is listed twice",
    ),
    (
        "[[entity]]",
        "[connect]\nurl = \"http://connect:8083\"\nconnectors = [\"c\"]\npoll_interval = \"0s\"\n\n[[entity]]",
        "shop.toml:14: field `connect.poll_interval`: expected a positive duration",
    ),
    (
        "table = \"public.products\"",
        "table = \"products\"",
        "shop.toml:12: field `entity[0].table`: expected \"schema.table\" (or \"database.table\" for MySQL), got \"products\"",
    ),
    (
        "namespace = \"product\"",
        "namespace = \"\"",
        "shop.toml:13: field `entity[0].namespace`: expected a non-empty name",
    ),
    (
        "keys = [\"product:{id}\"]",
        "keys = []",
        "shop.toml:15: field `entity[0].keys`: expected at least one key template",
    ),
    (
        "keys = [\"product:{id}\"]",
        "keys = [\"product:{id}\"]\nreplica_identity = \"nothing\"",
        "shop.toml:16: field `entity[0].replica_identity`: expected \"full\" or \"default\", got \"nothing\"",
    ),
];

/// One refusal per section, with the whole message: the sections are
/// validated by functions of their own, and each must still name the
/// file, the line and the field exactly as before.
#[test]
fn every_section_names_file_line_and_field() {
    for (from, to, expected) in SECTION_REFUSALS {
        assert!(BASE.contains(from), "{from}");
        assert_eq!(&error_of(&BASE.replacen(from, to, 1)), expected);
    }
}

#[test]
fn fanout_keys_and_row_limit_name_their_fields() {
    let base = BASE.replacen("[[entity]]", "[lookup]\nurl = \"postgres://x\"\n\n[[entity]]", 1);
    let fanout = |keys: &str, max_rows: &str| {
        format!("{base}\n[[entity.fanout]]\nquery = \"SELECT id FROM t WHERE c = $1\"\nbind = [\"id\"]\nkeys = {keys}\n{max_rows}")
    };
    assert_eq!(
        error_of(&fanout("[]", "")),
        "shop.toml:23: field `entity[0].fanout[0].keys`: expected at least one key template"
    );
    assert_eq!(
        error_of(&fanout("[\"item:{id\"]", "")),
        "shop.toml:23: field `entity[0].fanout[0].keys`: template \"item:{id\": unclosed `{` at byte 5"
    );
    assert_eq!(
        error_of(&fanout("[\"item:{id}\"]", "max_rows = 0")),
        "shop.toml:24: field `entity[0].fanout[0].max_rows`: expected at least 1"
    );
    let settings = parse("shop.toml", &fanout("[\"item:{id}\"]", ""), &no_env).unwrap();
    let fanouts = &settings.graph.entities()[0].fanouts;
    assert_eq!(fanouts[0].max_rows, DEFAULT_FANOUT_MAX_ROWS);
}

#[test]
fn section_defaults_when_absent() {
    let s = parse("shop.toml", BASE, &no_env).unwrap();
    assert_eq!(s.redis.max_retry_backoff, DEFAULT_MAX_RETRY_BACKOFF);
    assert_eq!(s.redis.loss_check_interval, default_loss_check_interval());
    assert_eq!(s.redis.wait_timeout, DEFAULT_WAIT_TIMEOUT);
    assert_eq!(s.probe.interval, default_probe_interval());
    assert_eq!(s.plan.eventual_linger, DEFAULT_EVENTUAL_LINGER);
    assert_eq!(s.plan.escalate_above_lag, None);
    assert_eq!(s.plan.route_workers, default_route_workers());
    assert!(s.lookup.is_none() && s.avro.is_none() && s.notices.is_none() && s.connect.is_none());
    let entity = &s.graph.entities()[0];
    assert_eq!(entity.consistency, Consistency::Eventual);
    assert!(!entity.full_before_image);
}

#[test]
fn route_workers_default_to_the_cores_capped_and_are_set_by_the_file() {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    assert_eq!(default_route_workers(), cores.min(DEFAULT_MAX_ROUTE_WORKERS));
    let inline = BASE.replace("[[entity]]", "[plan]\nroute_workers = 1\n\n[[entity]]");
    assert_eq!(parse("shop.toml", &inline, &no_env).unwrap().plan.route_workers, 1);
    let many = BASE.replace("[[entity]]", "[plan]\nroute_workers = 8\n\n[[entity]]");
    assert_eq!(parse("shop.toml", &many, &no_env).unwrap().plan.route_workers, 8);
}

#[test]
fn auto_instance_id_needs_a_fixed_admin_port() {
    let text = BASE.replace("group_id = \"g\"", "group_id = \"g\"\ninstance_id = \"auto\"");
    let fixed = parse(
        "shop.toml",
        &format!("{text}\n[admin]\nlisten = \"127.0.0.1:9799\"\n"),
        &no_env,
    )
    .unwrap();
    assert!(fixed.source.instance_id.unwrap().ends_with("-9799"));
    assert_eq!(
        error_of(&format!("{text}\n[admin]\nlisten = \"127.0.0.1:0\"\n")),
        "shop.toml:5: field `source.instance_id`: \"auto\" is named after the admin port, but admin.listen has port 0: set an explicit id"
    );
}

/// The password every case below hides somewhere; no error may contain it.
const PASSWORD: &str = "S3cret";

/// `BASE` with one more section, placed before the entity.
fn with_section(section: &str) -> String {
    BASE.replacen("[[entity]]", &format!("{section}\n\n[[entity]]"), 1)
}

/// A password in a URL-valued field never reaches a config error, whatever
/// form the URL was written in: the refusal of the URL itself, or of
/// another field of its section, or a syntax error on its line. Each case:
/// the file, and a fragment that shows which refusal it reached.
#[test]
fn no_config_error_repeats_a_password_from_the_file() {
    let cases = [
        (
            BASE.replace("redis://127.0.0.1:6379", "admin:S3cret@host:6379"),
            "field `redis.url`",
        ),
        (
            BASE.replace("redis://127.0.0.1:6379", ":S3cret@host:6379"),
            "field `redis.url`",
        ),
        (
            BASE.replace("redis://127.0.0.1:6379", "http://admin:S3cret@host:6379"),
            "field `redis.url`",
        ),
        (
            BASE.replace("redis://127.0.0.1:6379", "http://u:S3cret@x@h"),
            "field `redis.url`",
        ),
        (
            with_section("[connect]\nurl = \"user:S3cret@connect:8083\"\nconnectors = [\"c\"]"),
            "field `connect.url`",
        ),
        (
            with_section("[connect]\nurl = \"https://user:S3cret@connect:8083\"\nconnectors = []"),
            "field `connect.connectors`",
        ),
        (
            with_section("[admin]\nlisten = \"admin:S3cret@host:9799\""),
            "field `admin.listen`",
        ),
        (
            with_section("[lookup]\nurl = \"mysql://app:S3cret@db/shop\"\nattempts = 0"),
            "field `lookup.attempts`",
        ),
        (
            with_section("[dead_letters]\nurl = \"app:S3cret@db/dl\"\nschema = \"Bad\""),
            "field `dead_letters.schema`",
        ),
        (
            with_section(
                "[avro]\nregistry_url = \"https://key:S3cret@registry\"\npassword = \"S3cret\"\ntimeout = \"soon\"",
            ),
            "field `avro.timeout`",
        ),
        (
            BASE.replace(
                "brokers = \"127.0.0.1:9092\"",
                "brokers = \"u:S3cret@k1:9092\"\nmax_idle = \"soon\"",
            ),
            "field `source.max_idle`",
        ),
        (
            BASE.replace("url = \"redis://127.0.0.1:6379\"", "url = \"redis://:S3cret@host:6379"),
            "shop.toml:8:",
        ),
    ];
    for (text, reached) in &cases {
        assert!(text.contains(PASSWORD), "{text}");
        let msg = error_of(text);
        assert!(msg.contains(reached), "{msg}");
        assert!(!msg.contains(PASSWORD), "{msg}");
    }
}

/// The same for values from the environment: the error points at the
/// file's line, and quotes the environment's value with its password hidden.
#[test]
fn no_config_error_repeats_a_password_from_the_environment() {
    let cases = [
        (
            ENV_REDIS_URL,
            "admin:S3cret@host:6379",
            BASE.to_owned(),
            "field `redis.url`",
        ),
        (ENV_REDIS_URL, ":S3cret@host:6379", BASE.to_owned(), "field `redis.url`"),
        (
            ENV_CONNECT_URL,
            "u:S3cret@connect:8083",
            with_section("[connect]\nurl = \"http://connect:8083\"\nconnectors = [\"c\"]"),
            "field `connect.url`",
        ),
        (
            ENV_ADMIN_LISTEN,
            "admin:S3cret@host:9799",
            BASE.to_owned(),
            "field `admin.listen`",
        ),
        (
            ENV_LOOKUP_URL,
            "postgres://app:S3cret@db/shop",
            with_section("[lookup]\nurl = \"postgres://db/shop\"\nattempts = 0"),
            "field `lookup.attempts`",
        ),
        (
            ENV_DEAD_LETTERS_URL,
            "app:S3cret@db/dl",
            with_section("[dead_letters]\nurl = \"postgres://db/dl\"\nschema = \"Bad\""),
            "field `dead_letters.schema`",
        ),
        (
            ENV_SCHEMA_REGISTRY_URL,
            "key:S3cret@registry",
            with_section("[avro]\ntimeout = \"soon\""),
            "field `avro.timeout`",
        ),
        (
            ENV_SCHEMA_REGISTRY_PASSWORD,
            "S3cret",
            with_section("[avro]\nregistry_url = \"https://registry\"\ntimeout = \"soon\""),
            "field `avro.timeout`",
        ),
        (
            ENV_KAFKA_BROKERS,
            "u:S3cret@k1:9092",
            BASE.replace("group_id = \"g\"", "group_id = \"g\"\nmax_idle = \"soon\""),
            "field `source.max_idle`",
        ),
    ];
    for (name, value, text, reached) in &cases {
        assert!(value.contains(PASSWORD), "{value}");
        let env = |asked: &str| (asked == *name).then(|| (*value).to_owned());
        let msg = parse("shop.toml", text, &env).unwrap_err().to_string();
        assert!(msg.contains(reached), "{name}: {msg}");
        assert!(!msg.contains(PASSWORD), "{name}: {msg}");
    }
}

const SENTINEL: &str = "[redis.sentinel]\nmaster_name = \"cdc\"\naddresses = [\"10.0.0.1:26379\", \"[::1]:26380\"]\n\
                        password = \"DataS3cret\"\nsentinel_password = \"SentS3cret\"\n";

fn with_sentinel(extra: &str) -> String {
    BASE.replace("url = \"redis://127.0.0.1:6379\"\n", "")
        .replace("[[entity]]", &format!("{SENTINEL}{extra}\n[[entity]]"))
}

#[test]
fn a_sentinel_deployment_replaces_the_url() {
    let s = parse("shop.toml", &with_sentinel(""), &no_env).unwrap();
    let sentinel = s.redis.sentinel.as_ref().expect("sentinel settings");
    assert_eq!(sentinel.master_name, "cdc");
    assert_eq!(
        sentinel.addresses,
        vec![("10.0.0.1".to_owned(), 26379), ("::1".to_owned(), 26380)]
    );
    assert_eq!(sentinel.password.as_deref(), Some("DataS3cret"));
    assert_eq!(sentinel.db, 0);
    assert!(s.redis.url.is_empty());
    assert_eq!(s.redis.response_timeout, super::redis::DEFAULT_RESPONSE_TIMEOUT);
    // Nothing that is shown of the settings carries a password.
    for shown in [s.redis.describe(), format!("{:?}", s.redis)] {
        assert!(!shown.contains("S3cret"), "{shown}");
    }
    assert_eq!(
        s.redis.describe(),
        "sentinel master \"cdc\" via 10.0.0.1:26379,::1:26380"
    );
}

#[test]
fn the_environment_overrides_the_sentinels_and_their_secrets() {
    let env = |name: &str| match name {
        "CDC_REDIS_SENTINELS" => Some("127.0.0.1:36411, 127.0.0.1:36412".to_owned()),
        "CDC_REDIS_SENTINEL_MASTER" => Some("cdc-redis".to_owned()),
        "CDC_REDIS_SENTINEL_PASSWORD" => Some("FromEnv".to_owned()),
        // A URL for tools that cannot ask Sentinel: not used by the daemon here.
        "CDC_REDIS_URL" => Some("redis://127.0.0.1:36379".to_owned()),
        _ => None,
    };
    let s = parse("shop.toml", &with_sentinel(""), &env).unwrap();
    let sentinel = s.redis.sentinel.expect("sentinel settings");
    assert_eq!(sentinel.master_name, "cdc-redis");
    assert_eq!(
        sentinel.addresses,
        vec![("127.0.0.1".to_owned(), 36411), ("127.0.0.1".to_owned(), 36412)]
    );
    assert_eq!(sentinel.sentinel_password.as_deref(), Some("FromEnv"));
    assert!(s.redis.url.is_empty());
}

#[test]
fn sentinel_refusals_name_file_line_and_field_without_a_password() {
    let cases = [
        (
            BASE.replace("[[entity]]", &format!("{SENTINEL}\n[[entity]]")),
            "shop.toml:11: field `redis.sentinel`: expected either `url` or [redis.sentinel], not both",
        ),
        (
            BASE.replace("url = \"redis://127.0.0.1:6379\"\n", ""),
            "shop.toml:7: field `redis.url`: expected `url`",
        ),
        (
            with_sentinel("").replace("\"[::1]:26380\"", "\"sentinel-b\""),
            "shop.toml:12: field `redis.sentinel.addresses`: expected host:port, got \"sentinel-b\"",
        ),
        (
            with_sentinel("").replace("[\"10.0.0.1:26379\", \"[::1]:26380\"]", "[]"),
            "shop.toml:12: field `redis.sentinel.addresses`: expected at least one Sentinel",
        ),
        (
            with_sentinel("").replace("[redis.sentinel]", "cluster = true\n[redis.sentinel]"),
            "shop.toml:11: field `redis.sentinel`: not with cluster = true",
        ),
        (
            with_sentinel("db = -1"),
            "shop.toml:15: field `redis.sentinel.db`: expected a database number",
        ),
        (with_sentinel("passwd = \"x\""), "shop.toml:15:"),
    ];
    for (text, expected) in &cases {
        let msg = error_of(text);
        assert!(msg.starts_with(expected), "{msg}\nexpected: {expected}");
        assert!(!msg.contains("S3cret"), "{msg}");
    }
}

#[test]
fn response_timeout_bounds_wait_timeout() {
    let s = parse(
        "shop.toml",
        &BASE.replace(
            "version_ttl = \"1h\"",
            "version_ttl = \"1h\"\nresponse_timeout = \"2s\"",
        ),
        &no_env,
    )
    .unwrap();
    assert_eq!(s.redis.response_timeout, std::time::Duration::from_secs(2));
    let msg = error_of(&BASE.replace(
        "version_ttl = \"1h\"",
        "version_ttl = \"1h\"\nresponse_timeout = \"2s\"\nwait_replicas = 1\nwait_timeout = \"3s\"",
    ));
    assert!(
        msg.starts_with("shop.toml:12: field `redis.wait_timeout`: expected less than 2s"),
        "{msg}"
    );
    let msg = error_of(&BASE.replace(
        "version_ttl = \"1h\"",
        "version_ttl = \"1h\"\nresponse_timeout = \"500ms\"\nwait_replicas = 1",
    ));
    assert!(
        msg.starts_with("shop.toml:10: field `redis.response_timeout`: expected more than"),
        "{msg}"
    );
}
