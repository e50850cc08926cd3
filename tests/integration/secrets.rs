//! No secret in any output. Distinctive passwords are placed through every
//! config path (each URL field in every URL form, the environment
//! overrides, the librdkafka passthrough, the registry password), in
//! configs that are invalid, whose servers are unreachable or refuse the
//! password, and one that works; every command's stdout and stderr (human
//! and JSON logs) and the daemon's `/metrics` and `/readyz` bodies are
//! searched for each secret, as written, percent-decoded and in base64.
//!
//! Needs Kafka from the stack and `redis-server` on the PATH: the test runs
//! its own password-protected Redis (port `CDC_SECRETS_REDIS_PORT`, 16960
//! by default). Nothing listens on the ports of the other URLs (the next
//! few ports above it), so connecting to them fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

use crate::common::{cli, http_get, kafka_brokers, unique};

/// The password the test's own Redis accepts (user `default`).
const REDIS_GOOD_PASSWORD: &str = "ZqRedisGoodPw7k";

fn redis_port() -> u16 {
    std::env::var("CDC_SECRETS_REDIS_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(16960)
}

/// A port on which nothing listens: the URLs of the dead-letter store, the
/// lookup database, the registry and Kafka Connect point there.
fn closed_port(offset: u16) -> u16 {
    redis_port() + offset
}

/// Every secret placed, and what each output must not contain.
#[derive(Default)]
struct Secrets {
    /// Text that must not appear, with the secret it comes from.
    forbidden: Vec<(String, String)>,
}

impl Secrets {
    /// Registers `written` (as it stands in the config) and its decoded
    /// form `plain`, with the base64 text any encoding of `plain` contains.
    fn add(&mut self, written: &str, plain: &str) {
        for text in [written, plain] {
            self.forbidden.push((text.to_owned(), plain.to_owned()));
        }
        for core in base64_cores(plain.as_bytes()) {
            self.forbidden.push((core, format!("{plain} (base64)")));
        }
    }

    /// Fails with every leak found in `outputs`.
    fn assert_absent(&self, outputs: &[(String, String)]) {
        let mut leaks = Vec::new();
        for (label, text) in outputs {
            for (needle, secret) in &self.forbidden {
                if let Some(at) = text.find(needle.as_str()) {
                    let start = text[..at].char_indices().rev().nth(120).map_or(0, |(i, _)| i);
                    let end = (at + needle.len() + 120).min(text.len());
                    let end = (end..=text.len())
                        .find(|&i| text.is_char_boundary(i))
                        .unwrap_or(text.len());
                    leaks.push(format!("{label}: {secret}\n    ...{}...", &text[start..end]));
                }
            }
        }
        assert!(leaks.is_empty(), "{} leaks:\n{}", leaks.len(), leaks.join("\n"));
    }
}

/// The base64 text found in the encoding of any bytes that contain
/// `secret`, at each of the three alignments: the characters made of the
/// secret's bits only.
fn base64_cores(secret: &[u8]) -> Vec<String> {
    (0..3usize)
        .map(|pad| {
            let mut bytes = vec![0u8; pad];
            bytes.extend_from_slice(secret);
            let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let first = (8 * pad).div_ceil(6);
            let last = 8 * (pad + secret.len()) / 6;
            encoded[first..last].to_owned()
        })
        .collect()
}

/// The forms a URL with a password may be written in.
#[derive(Debug, Clone, Copy)]
enum Form {
    /// `scheme://user:pw@host:port/path`
    Scheme,
    /// `user:pw@host:port` (no scheme: refused by every URL field)
    NoScheme,
    /// `:pw@host:port` (no scheme, no user)
    PasswordOnly,
    /// `scheme://user:p%2Fw@host:port/path`
    PercentEncoded,
    /// `scheme://host:port/path?password=pw`
    Query,
}

const FORMS: [Form; 5] = [
    Form::Scheme,
    Form::NoScheme,
    Form::PasswordOnly,
    Form::PercentEncoded,
    Form::Query,
];

/// The URL-valued settings.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    Redis,
    DeadLetters,
    Lookup,
    Registry,
    Connect,
}

const FIELDS: [Field; 5] = [
    Field::Redis,
    Field::DeadLetters,
    Field::Lookup,
    Field::Registry,
    Field::Connect,
];

impl Field {
    /// Scheme, host:port and path of this field's server. Redis is the
    /// test's own, which refuses these passwords; nothing listens on the
    /// others.
    fn server(self) -> (&'static str, String, &'static str) {
        match self {
            Field::Redis => ("redis", format!("127.0.0.1:{}", redis_port()), "/0"),
            Field::DeadLetters => ("postgres", format!("127.0.0.1:{}", closed_port(2)), "/shop"),
            Field::Lookup => ("postgres", format!("127.0.0.1:{}", closed_port(3)), "/shop"),
            Field::Registry => ("http", format!("127.0.0.1:{}", closed_port(4)), "/"),
            Field::Connect => ("http", format!("127.0.0.1:{}", closed_port(5)), "/"),
        }
    }

    /// The URL in `form`, its password registered in `secrets`.
    fn url(self, form: Form, origin: &str, secrets: &mut Secrets) -> String {
        let (scheme, host, path) = self.server();
        let name = format!("Zq{self:?}{form:?}{origin}");
        let user = "appuser";
        match form {
            Form::PercentEncoded => {
                let written = format!("{name}%2F%40Pw");
                secrets.add(&written, &format!("{name}/@Pw"));
                format!("{scheme}://{user}:{written}@{host}{path}")
            }
            _ => {
                let secret = format!("{name}Pw");
                secrets.add(&secret, &secret);
                match form {
                    Form::Scheme => format!("{scheme}://{user}:{secret}@{host}{path}"),
                    Form::NoScheme => format!("{user}:{secret}@{host}"),
                    Form::PasswordOnly => format!(":{secret}@{host}"),
                    Form::Query => format!("{scheme}://{host}{path}?user={user}&password={secret}"),
                    Form::PercentEncoded => unreachable!(),
                }
            }
        }
    }

    /// The environment variable that overrides this field.
    fn env(self) -> &'static str {
        match self {
            Field::Redis => "CDC_REDIS_URL",
            Field::DeadLetters => "CDC_DEAD_LETTERS_URL",
            Field::Lookup => "CDC_LOOKUP_URL",
            Field::Registry => "CDC_SCHEMA_REGISTRY_URL",
            Field::Connect => "CDC_CONNECT_URL",
        }
    }
}

/// Secrets a plaintext client accepts and never sends.
const PLAINTEXT_IGNORED: &[&str] = &["sasl.password", "ssl.key.password"];

/// One configuration under test: the file and the environment.
struct Case {
    label: String,
    config: PathBuf,
    env: Vec<(String, String)>,
    /// Whether `run` must become ready (the one working configuration).
    expect_ready: bool,
}

/// The parts of a config file; a field not given takes a working or absent value.
#[derive(Default)]
struct Parts {
    redis: Option<String>,
    dead_letters: Option<String>,
    lookup: Option<String>,
    registry: Option<String>,
    connect: Option<String>,
    librdkafka: String,
    avro_extra: String,
    extra: String,
}

/// The topic every case subscribes to, created by the test.
fn topic() -> &'static str {
    static TOPIC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOPIC.get_or_init(|| unique("secrets_topic"))
}

fn good_redis_url() -> String {
    format!("redis://default:{REDIS_GOOD_PASSWORD}@127.0.0.1:{}/0", redis_port())
}

fn write_config(dir: &Path, label: &str, parts: &Parts) -> PathBuf {
    let redis = parts.redis.clone().unwrap_or_else(good_redis_url);
    let mut text = format!(
        r#"[source]
brokers = "{brokers}"
group_id = "{group}"
topics = ["{topic}"]
[source.librdkafka]
{librdkafka}
[redis]
url = "{redis}"
version_prefix = "{prefix}:"
version_ttl = "1h"
max_retry_backoff = "200ms"
[admin]
listen = "127.0.0.1:0"
[[entity]]
table = "public.fx_products"
namespace = "product"
keys = ["product:{{id}}"]
"#,
        brokers = kafka_brokers(),
        group = unique("secrets_group"),
        topic = topic(),
        librdkafka = parts.librdkafka,
        prefix = unique("secrets"),
    );
    if let Some(url) = &parts.dead_letters {
        text += &format!("[dead_letters]\nurl = \"{url}\"\n");
    }
    if let Some(url) = &parts.lookup {
        text += &format!("[lookup]\nurl = \"{url}\"\ntimeout = \"500ms\"\nattempts = 1\n");
    }
    if parts.registry.is_some() || !parts.avro_extra.is_empty() {
        text += "[avro]\n";
        if let Some(url) = &parts.registry {
            text += &format!("registry_url = \"{url}\"\ntimeout = \"500ms\"\n");
        }
        text += &parts.avro_extra;
        text += "\n";
    }
    if let Some(url) = &parts.connect {
        text +=
            &format!("[connect]\nurl = \"{url}\"\nconnectors = [\"secrets-connector\"]\npoll_interval = \"500ms\"\n");
    }
    text += &parts.extra;
    let path = dir.join(format!("{label}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Every configuration: each form of each URL field in the file and in
/// the environment, the librdkafka secrets against a broker that refuses
/// SASL, the registry contacted at start, and one that works.
fn cases(dir: &Path, secrets: &mut Secrets) -> Vec<Case> {
    let mut cases = Vec::new();
    let librdkafka = |origin: &str, secrets: &mut Secrets, protocol: &str, names: &[&str]| {
        let mut text = format!("\"security.protocol\" = \"{protocol}\"\n\"sasl.username\" = \"appuser\"\n");
        for name in names {
            let secret = format!("ZqKafka{}{origin}Pw", name.replace('.', ""));
            secrets.add(&secret, &secret);
            text += &format!("\"{name}\" = \"{secret}\"\n");
        }
        text
    };
    let avro_password = |origin: &str, secrets: &mut Secrets| {
        let secret = format!("ZqAvroPassword{origin}Pw");
        secrets.add(&secret, &secret);
        format!("username = \"appuser\"\npassword = \"{secret}\"")
    };

    // The working one: secrets the clients accept or do not use
    // (plaintext ignores the SASL and TLS passwords).
    let origin = "Ready";
    let parts = Parts {
        librdkafka: librdkafka(origin, secrets, "plaintext", PLAINTEXT_IGNORED),
        lookup: Some(Field::Lookup.url(Form::Scheme, origin, secrets)),
        registry: Some(Field::Registry.url(Form::Scheme, origin, secrets)),
        avro_extra: avro_password(origin, secrets),
        ..Parts::default()
    };
    secrets.add(REDIS_GOOD_PASSWORD, REDIS_GOOD_PASSWORD);
    cases.push(Case {
        label: "ready".into(),
        config: write_config(dir, "ready", &parts),
        env: vec![],
        expect_ready: true,
    });

    // The registry contacted at start (the notice schema is registered):
    // its connection error ends the start.
    let origin = "Register";
    let parts = Parts {
        registry: Some(Field::Registry.url(Form::Scheme, origin, secrets)),
        avro_extra: avro_password(origin, secrets),
        extra: format!("[notices]\nkafka_topic = \"{}\"\n", unique("secrets_notices")),
        ..Parts::default()
    };
    cases.push(Case {
        label: "registry_at_start".into(),
        config: write_config(dir, "registry_at_start", &parts),
        env: vec![],
        expect_ready: false,
    });

    // SASL against a plaintext broker: the broker refuses the handshake.
    let origin = "Sasl";
    let parts = Parts {
        librdkafka: librdkafka(origin, secrets, "SASL_PLAINTEXT", PLAINTEXT_IGNORED)
            + "\"sasl.mechanism\" = \"PLAIN\"\n",
        ..Parts::default()
    };
    cases.push(Case {
        label: "kafka_sasl_refused".into(),
        config: write_config(dir, "kafka_sasl_refused", &parts),
        env: vec![],
        expect_ready: false,
    });
    // The same, with the credentials from the environment over the file's.
    let origin = "SaslEnv";
    let parts = Parts {
        librdkafka: librdkafka(origin, secrets, "SASL_PLAINTEXT", &[]) + "\"sasl.mechanism\" = \"PLAIN\"\n",
        ..Parts::default()
    };
    let env_password = format!("ZqKafkaSaslPassword{origin}Pw");
    secrets.add(&env_password, &env_password);
    cases.push(Case {
        label: "kafka_sasl_from_env_refused".into(),
        config: write_config(dir, "kafka_sasl_from_env_refused", &parts),
        env: vec![
            ("CDC_KAFKA_SASL_USERNAME".into(), "appuser".into()),
            ("CDC_KAFKA_SASL_PASSWORD".into(), env_password),
        ],
        expect_ready: false,
    });
    // This build of librdkafka has no OAuth/OIDC: the client secret fails
    // every client's creation, and the error names the setting.
    let origin = "Oauth";
    let parts = Parts {
        librdkafka: librdkafka(origin, secrets, "SASL_PLAINTEXT", &["sasl.oauthbearer.client.secret"])
            + "\"sasl.mechanism\" = \"OAUTHBEARER\"\n\"sasl.oauthbearer.method\" = \"oidc\"\n",
        ..Parts::default()
    };
    cases.push(Case {
        label: "kafka_oauth_refused".into(),
        config: write_config(dir, "kafka_oauth_refused", &parts),
        env: vec![],
        expect_ready: false,
    });

    for form in FORMS {
        // Every field in one file: with a scheme each server is reached
        // (and refuses or is not there); without one each is a config
        // error, and only the first is reported, so one file per field.
        let groups: Vec<Vec<Field>> = match form {
            Form::NoScheme | Form::PasswordOnly => FIELDS.iter().map(|f| vec![*f]).collect(),
            _ => vec![FIELDS.to_vec()],
        };
        for fields in groups {
            let names: Vec<String> = fields.iter().map(|f| format!("{f:?}")).collect();
            let names = names.join("_");
            // In the file.
            let origin = "File";
            let mut parts = Parts {
                avro_extra: avro_password(&format!("{origin}{form:?}{names}"), secrets),
                ..Parts::default()
            };
            for field in &fields {
                let url = Some(field.url(form, &format!("{origin}{names}"), secrets));
                match field {
                    Field::Redis => parts.redis = url,
                    Field::DeadLetters => parts.dead_letters = url,
                    Field::Lookup => parts.lookup = url,
                    Field::Registry => parts.registry = url,
                    Field::Connect => parts.connect = url,
                }
            }
            let label = format!("file_{form:?}_{names}");
            cases.push(Case {
                config: write_config(dir, &label, &parts),
                label,
                env: vec![],
                expect_ready: false,
            });
            // In the environment, over a file whose sections hold no secret
            // ([connect] is overridden only where the file has it).
            let origin = "Env";
            let parts = Parts {
                connect: fields
                    .contains(&Field::Connect)
                    .then(|| format!("http://127.0.0.1:{}/", closed_port(5))),
                ..Parts::default()
            };
            let mut env: Vec<(String, String)> = fields
                .iter()
                .map(|field| {
                    (
                        field.env().to_owned(),
                        field.url(form, &format!("{origin}{names}"), secrets),
                    )
                })
                .collect();
            let password = format!("ZqRegistryEnvPassword{form:?}{names}Pw");
            secrets.add(&password, &password);
            env.push(("CDC_SCHEMA_REGISTRY_USER".into(), "appuser".into()));
            env.push(("CDC_SCHEMA_REGISTRY_PASSWORD".into(), password));
            let label = format!("env_{form:?}_{names}");
            cases.push(Case {
                config: write_config(dir, &label, &parts),
                label,
                env,
                expect_ready: false,
            });
        }
    }

    // An admin address mistyped as a URL, in the file and the environment.
    let secret = "ZqAdminListenFilePw";
    secrets.add(secret, secret);
    let parts = Parts {
        extra: String::new(),
        ..Parts::default()
    };
    let path = write_config(dir, "admin_listen_file", &parts);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"appuser:{secret}@127.0.0.1:0\""),
    );
    std::fs::write(&path, text).unwrap();
    cases.push(Case {
        label: "admin_listen_file".into(),
        config: path,
        env: vec![],
        expect_ready: false,
    });
    let secret = "ZqAdminListenEnvPw";
    secrets.add(secret, secret);
    cases.push(Case {
        label: "admin_listen_env".into(),
        config: write_config(dir, "admin_listen_env", &Parts::default()),
        env: vec![("CDC_ADMIN_LISTEN".into(), format!("appuser:{secret}@127.0.0.1:0"))],
        expect_ready: false,
    });
    cases
}

/// The test's own Redis, stopped when dropped.
struct OwnRedis(Child);

impl OwnRedis {
    fn start(dir: &Path) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--port", &redis_port().to_string(), "--bind", "127.0.0.1"])
            .args(["--requirepass", REDIS_GOOD_PASSWORD, "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", redis_port())).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                redis_port()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnRedis(child)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary, without the overrides of the caller's environment, with the
/// case's own.
fn command(case: &Case, format: &str) -> Command {
    let mut command = cli();
    for name in [
        "CDC_SCHEMA_REGISTRY_URL",
        "CDC_SCHEMA_REGISTRY_USER",
        "CDC_SCHEMA_REGISTRY_PASSWORD",
        "CDC_INSTANCE_ID",
        "CDC_GROUP_PROTOCOL",
        "CDC_KAFKA_SASL_USERNAME",
        "CDC_KAFKA_SASL_PASSWORD",
    ] {
        command.env_remove(name);
    }
    // Debug logs too: a secret in a debug line leaks as soon as someone turns them on.
    command.env("CDC_LOG", "debug,h2=info,hyper=info,rustls=info");
    command.envs(case.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command.args(["--log-format", format]);
    command
}

/// Runs a command to its end (killed after 60 s); its stdout and stderr.
fn output(case: &Case, format: &str, args: &[&str], dir: &Path) -> Vec<(String, String)> {
    let label = format!("{} {format} {}", case.label, args.join(" "));
    let out = dir.join(unique("out"));
    let err = dir.join(unique("err"));
    let mut child = command(case, format)
        .args(args)
        .arg("--config")
        .arg(&case.config)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    wait_for_exit(&mut child, Duration::from_secs(60), &label);
    vec![
        (format!("{label}: stdout"), std::fs::read_to_string(&out).unwrap()),
        (format!("{label}: stderr"), std::fs::read_to_string(&err).unwrap()),
    ]
}

fn wait_for_exit(child: &mut Child, bound: Duration, label: &str) -> ExitStatus {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{label}: still running after {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process killed (if still running) and reaped when dropped, so a
/// failing assertion leaves no daemon behind.
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The admin address from the daemon's log, human or JSON.
fn admin_address(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("admin listener bound"))?;
    if let Some(field) = line.split_whitespace().find_map(|f| f.strip_prefix("address=")) {
        return Some(field.to_owned());
    }
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    json.get("address")?.as_str().map(str::to_owned)
}

/// `run` until ready (the working case, 60 s at most) or for 3 s, the
/// admin bodies, then SIGTERM; its outputs. Asserts that it stops cleanly
/// and that every background task stopped.
async fn daemon_outputs(case: &Case, format: &str, dir: &Path) -> Vec<(String, String)> {
    let label = format!("{} {format} run", case.label);
    let out = dir.join(unique("out"));
    let err = dir.join(unique("err"));
    let mut daemon = KilledOnDrop(
        command(case, format)
            .args(["run", "--config"])
            .arg(&case.config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap(),
    );
    let child = &mut daemon.0;
    let mut outputs = Vec::new();
    let wait = if case.expect_ready {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(3)
    };
    let started = Instant::now();
    let mut address = None;
    let mut exited = None;
    let mut ready = false;
    while started.elapsed() < wait {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        if address.is_none() {
            address = admin_address(&std::fs::read_to_string(&err).unwrap_or_default());
        }
        if let Some(admin) = &address {
            if let Some((200, _)) = http_get(admin, "/readyz").await {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let (Some(admin), None) = (&address, exited) {
        for path in ["/metrics", "/readyz"] {
            let (_, body) = http_get(admin, path).await.unwrap_or_default();
            outputs.push((format!("{label}: {path}"), body));
        }
    }
    let log = || std::fs::read_to_string(&err).unwrap_or_default();
    if exited.is_none() {
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let status = wait_for_exit(child, Duration::from_secs(40), &label);
        assert!(status.success(), "{label}: {status} after SIGTERM\n{}", log());
        // Every tracked task ended within the bound: none left behind.
        assert!(log().contains("background tasks stopped"), "{label}\n{}", log());
        assert!(!log().contains("did not stop in time"), "{label}\n{}", log());
    }
    if case.expect_ready {
        assert!(ready, "{label}: not ready within {wait:?}\n{}", log());
    }
    outputs.push((format!("{label}: stdout"), std::fs::read_to_string(&out).unwrap()));
    outputs.push((format!("{label}: stderr"), log()));
    outputs
}

#[tokio::test]
async fn no_secret_reaches_any_output() {
    let dir = tempfile::tempdir().unwrap();
    let _redis = OwnRedis::start(dir.path());
    // The subscribed topic exists, so the working case becomes ready.
    crate::common::produce_id_change(topic(), "public.fx_products", "c", 1, 1).await;
    let mut secrets = Secrets::default();
    let cases = cases(dir.path(), &mut secrets);
    let record = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/debezium/insert.json");
    let record = record.to_str().unwrap();
    let mut outputs = Vec::new();
    for case in &cases {
        for format in ["human", "json"] {
            outputs.extend(daemon_outputs(case, format, dir.path()).await);
            outputs.extend(output(case, format, &["check"], dir.path()));
        }
        outputs.extend(output(case, "human", &["explain", "--record", record], dir.path()));
        outputs.extend(output(case, "json", &["dead-letters", "list"], dir.path()));
        outputs.extend(output(
            case,
            "human",
            &["audit", "--duration", "3s", "--listen", "127.0.0.1:0"],
            dir.path(),
        ));
    }
    // The outputs are not all empty: the commands ran and said something,
    // so a missing secret means it was hidden, not that nothing printed.
    let said: usize = outputs.iter().map(|(_, text)| text.len()).sum();
    assert!(said > 10_000, "only {said} bytes of output");
    assert!(
        outputs
            .iter()
            .any(|(label, text)| label.ends_with("/metrics") && text.contains("cdc_invalidator_")),
        "no /metrics body captured"
    );
    secrets.assert_absent(&outputs);
}

/// The check itself finds a secret in any of its forms.
#[test]
fn the_search_finds_each_form_of_a_secret() {
    let mut secrets = Secrets::default();
    secrets.add("Zq%2FSample", "Zq/Sample");
    let basic = base64::engine::general_purpose::STANDARD.encode("appuser:Zq/Sample");
    for text in ["x Zq%2FSample y", "url=Zq/Sample", &format!("Basic {basic}")] {
        let caught = std::panic::catch_unwind(|| secrets.assert_absent(&[("t".into(), text.to_owned())]));
        assert!(caught.is_err(), "{text}");
    }
    secrets.assert_absent(&[("t".into(), "appuser:*** Zq/Sampl".into())]);
}
