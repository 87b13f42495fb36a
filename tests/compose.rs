//! The docker compose stack, checked without a container engine.
//!
//! `docker-compose config` (Debian's `docker-compose` 1.29, which needs no engine)
//! resolves docker/compose.yaml, and the resolved services are held against the other
//! files of the stack: docker/Dockerfile, docker/herald.toml (through the real
//! `herald check-config`, with each service's environment), docker/nginx.conf, the
//! `monitoring` profile's Prometheus and Grafana files, .dockerignore and the
//! workspace itself. (tests/ops.rs runs the monitoring files against a real node.)
//!
//! What this cannot check is the container runtime: no image is built and no
//! container starts here (docs/deployment.md, "What is not verified here").
//!
//! A missing `docker-compose` fails every test, with the command that installs it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use herald_e2e::{herald_bin, read, repo_root};
use serde_json::Value;

/// How to get `docker-compose`, for the failure message.
const INSTALL: &str = "docker-compose is not installed. These tests validate \
    docker/compose.yaml with it (no container engine needed). Install it with \
    `sudo apt-get install -y --no-install-recommends docker-compose` (Debian and Ubuntu; \
    scripts/test does this; without recommends it leaves the Docker engine out)";

/// The compose file, relative to the repository root.
const COMPOSE_FILE: &str = "docker/compose.yaml";

fn read_toml(path: &str) -> Result<toml::Table> {
    read(path)?
        .parse::<toml::Table>()
        .with_context(|| format!("parse {path}"))
}

// ---------------------------------------------------------------------------------
// The resolved compose file

/// The stack as `docker-compose config` resolved it: anchors merged, relative paths
/// made absolute, every service of every profile listed with its `profiles`
/// (docker-compose 1.29 lists them all whatever `--profile` says; [`active`] tells
/// which ones a set of profiles starts).
struct Stack {
    services: BTreeMap<String, Value>,
}

/// The stack's profiles.
const PROFILES: [&str; 2] = ["cluster", "monitoring"];

/// Whether `up` with these `--profile`s starts `service`: it has no profile, or one
/// of them.
fn active(service: &Value, with: &[&str]) -> bool {
    let own = profiles(service);
    own.is_empty() || own.iter().any(|p| with.contains(&p.as_str()))
}

/// Runs `docker-compose -f docker/compose.yaml ARGS` from the repository root and
/// returns its stdout; fails unless it exits 0.
fn docker_compose(args: &[&str]) -> Result<String> {
    let out = Command::new("docker-compose")
        .current_dir(repo_root())
        .args(["-f", COMPOSE_FILE])
        .args(args)
        // Only the file decides what is resolved.
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROFILES")
        .env_remove("COMPOSE_PROJECT_NAME")
        .output();
    let out = match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{INSTALL}"),
        other => other.context("run docker-compose")?,
    };
    ensure!(
        out.status.success(),
        "docker-compose -f {COMPOSE_FILE} {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

impl Stack {
    /// `docker-compose config`, with `--profile P` for each of `with`.
    fn load(with: &[&str]) -> Result<Stack> {
        let mut args = Vec::new();
        for p in with {
            args.extend(["--profile", p]);
        }
        args.push("config");
        let text = docker_compose(&args)?;
        let doc: Value = yaml_serde::from_str(&text).context("parse docker-compose config")?;
        let services = doc["services"]
            .as_object()
            .ok_or_else(|| anyhow!("no services in:\n{text}"))?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Stack { services })
    }

    /// The stack of the `cluster` profile.
    fn cluster() -> Result<Stack> {
        Stack::load(&["cluster"])
    }

    /// The stack with every profile: every service.
    fn all() -> Result<Stack> {
        Stack::load(&PROFILES)
    }

    fn service(&self, name: &str) -> Result<&Value> {
        self.services
            .get(name)
            .ok_or_else(|| anyhow!("no service `{name}` in {COMPOSE_FILE}"))
    }

    /// Services some other service waits for with `service_completed_successfully`:
    /// one-shot jobs, not long-running services.
    fn one_shots(&self) -> BTreeSet<String> {
        self.services
            .values()
            .flat_map(depends_on)
            .filter(|(_, condition)| condition == "service_completed_successfully")
            .map(|(name, _)| name)
            .collect()
    }

    /// Services that run the Herald image (built from docker/Dockerfile).
    fn herald_image(&self) -> impl Iterator<Item = (&String, &Value)> + '_ {
        self.services.iter().filter(|(_, s)| {
            s["build"]["dockerfile"].as_str() == Some("docker/Dockerfile")
                || s["build"]["dockerfile"]
                    .as_str()
                    .is_some_and(|d| d.ends_with("/docker/Dockerfile"))
        })
    }

    /// Herald nodes: services of the Herald image that keep its `herald` entrypoint.
    fn herald_nodes(&self) -> Vec<(&String, &Value)> {
        self.herald_image()
            .filter(|(_, s)| s.get("entrypoint").is_none())
            .collect()
    }
}

/// A service's `depends_on` as (service, condition); the short list form means
/// `service_started`.
fn depends_on(service: &Value) -> Vec<(String, String)> {
    match &service["depends_on"] {
        Value::Object(map) => map
            .iter()
            .map(|(name, spec)| {
                let condition = spec["condition"].as_str().unwrap_or("service_started");
                (name.clone(), condition.to_owned())
            })
            .collect(),
        Value::Array(list) => list
            .iter()
            .filter_map(|v| v.as_str())
            .map(|name| (name.to_owned(), "service_started".to_owned()))
            .collect(),
        _ => Vec::new(),
    }
}

fn profiles(service: &Value) -> Vec<String> {
    strings(&service["profiles"])
}

/// A YAML list of scalars as strings (a missing value is an empty list).
fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| a.iter().map(scalar).collect())
        .unwrap_or_default()
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A service's environment as pairs (both the map and the `KEY=VALUE` list form).
fn environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
        Value::Array(list) => list
            .iter()
            .filter_map(|v| v.as_str())
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        _ => Vec::new(),
    }
}

fn env_var<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A healthcheck's test command, or `None` when there is none or it is disabled.
fn healthcheck(service: &Value) -> Option<Vec<String>> {
    let hc = &service["healthcheck"];
    if hc["disable"].as_bool() == Some(true) {
        return None;
    }
    let test = match &hc["test"] {
        Value::String(s) => vec!["CMD-SHELL".to_owned(), s.clone()],
        other => strings(other),
    };
    match test.first().map(String::as_str) {
        Some("CMD" | "CMD-SHELL") if test.len() > 1 => Some(test),
        _ => None,
    }
}

/// Published ports as (host port, container port).
fn published_ports(service: &Value) -> Result<Vec<(u16, u16)>> {
    let mut ports = Vec::new();
    for p in service["ports"].as_array().into_iter().flatten() {
        let pair = match p {
            Value::Object(_) => (scalar(&p["published"]), scalar(&p["target"])),
            Value::String(s) => {
                let mut parts = s.rsplit(':');
                let target = parts.next().unwrap_or_default().to_owned();
                let published = parts.next().unwrap_or_default().to_owned();
                (published, target)
            }
            other => bail!("unexpected port entry {other}"),
        };
        ports.push((
            pair.0
                .parse()
                .with_context(|| format!("published port {p}"))?,
            pair.1.parse().with_context(|| format!("target port {p}"))?,
        ));
    }
    Ok(ports)
}

/// A bind mount: host path, container path, read-only.
#[derive(Debug)]
struct Mount {
    source: PathBuf,
    target: String,
    read_only: bool,
}

fn mounts(service: &Value) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for v in service["volumes"].as_array().into_iter().flatten() {
        match v {
            // docker-compose 1.29: "HOST:CONTAINER[:ro]".
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                if parts.len() >= 2 {
                    mounts.push(Mount {
                        source: PathBuf::from(parts[0]),
                        target: parts[1].to_owned(),
                        read_only: parts
                            .get(2)
                            .is_some_and(|o| o.split(',').any(|o| o == "ro")),
                    });
                }
            }
            // The long form (Compose v2).
            Value::Object(_) => mounts.push(Mount {
                source: PathBuf::from(scalar(&v["source"])),
                target: scalar(&v["target"]),
                read_only: v["read_only"].as_bool() == Some(true),
            }),
            _ => {}
        }
    }
    mounts
}

/// `host` of `scheme://user@host:port` or `host:port`.
fn host_of(address: &str) -> String {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    rest.rsplit_once(':').map_or(rest, |(h, _)| h).to_owned()
}

fn port_of(address: &str) -> Result<u16> {
    let port = address
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .ok_or_else(|| anyhow!("no port in {address}"))?;
    port.parse().with_context(|| format!("port of `{address}`"))
}

// ---------------------------------------------------------------------------------
// Herald's effective configuration in a service

/// The configuration file a Herald node is started with: the argument of its
/// `--config`, and the host file mounted there.
fn herald_config_file(name: &str, node: &Value) -> Result<(String, Mount)> {
    let command = strings(&node["command"]);
    let at = command
        .iter()
        .position(|a| a == "--config" || a == "-c")
        .ok_or_else(|| anyhow!("{name}: command {command:?} has no --config"))?;
    let path = command
        .get(at + 1)
        .ok_or_else(|| anyhow!("{name}: --config without a file"))?
        .clone();
    let mount = mounts(node)
        .into_iter()
        .find(|m| m.target == path)
        .ok_or_else(|| anyhow!("{name}: nothing is mounted at {path}"))?;
    Ok((path, mount))
}

/// `herald check-config` on the file mounted in `node`, with exactly the service's
/// environment (none of this process's `HERALD_*` variables): the configuration the
/// container would run with, as TOML.
fn effective_config(name: &str, node: &Value) -> Result<toml::Table> {
    let (_, mount) = herald_config_file(name, node)?;
    let out = Command::new(herald_bin())
        .env_clear()
        .envs(environment(node))
        .arg("check-config")
        .arg("--config")
        .arg(&mount.source)
        .output()
        .context("run herald check-config")?;
    ensure!(
        out.status.success(),
        "{name}: `herald check-config --config {}` with the service's environment failed \
         ({}):\n{}",
        mount.source.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)?
        .parse::<toml::Table>()
        .with_context(|| format!("{name}: parse check-config output"))
}

fn get<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.get(part)?;
    }
    Some(value)
}

fn get_str<'a>(table: &'a toml::Table, dotted: &str) -> Result<&'a str> {
    get(table, dotted)
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("no string `{dotted}` in the effective config"))
}

fn get_int(table: &toml::Table, dotted: &str) -> Result<i64> {
    get(table, dotted)
        .and_then(|v| v.as_integer())
        .ok_or_else(|| anyhow!("no integer `{dotted}` in the effective config"))
}

fn bridges<'a>(config: &'a toml::Table, kind: &str) -> Vec<&'a toml::Table> {
    get(config, &format!("bridge.{kind}"))
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|b| b.as_table())
        .collect()
}

// ---------------------------------------------------------------------------------
// The compose file itself

#[test]
fn compose_file_resolves_with_and_without_its_profiles() -> Result<()> {
    let default = Stack::load(&[])?;
    let cluster = Stack::cluster()?;
    let monitoring = Stack::load(&["monitoring"])?;
    let all = Stack::all()?;
    let plain = [
        "herald",
        "nats",
        "kafka",
        "topic-init",
        "nats-publisher",
        "kafka-producer",
    ];
    for name in plain {
        let service = default.service(name)?;
        ensure!(
            profiles(service).is_empty(),
            "{name} must start with a plain `up`, but has profiles {:?}",
            profiles(service)
        );
    }
    for name in ["herald-1", "herald-2", "nginx"] {
        ensure!(
            profiles(cluster.service(name)?) == ["cluster"],
            "{name} belongs to the `cluster` profile only"
        );
    }
    for name in ["prometheus", "grafana"] {
        ensure!(
            profiles(monitoring.service(name)?) == ["monitoring"],
            "{name} belongs to the `monitoring` profile only"
        );
    }
    // Every service of the stack is one of the above: a new one needs a thought
    // about which profile it belongs to, and a line here.
    ensure!(
        all.services.len() == 11,
        "services: {:?}",
        all.services.keys().collect::<Vec<_>>()
    );
    // What each combination of profiles starts (docker-compose 1.29 resolves every
    // service whatever the profiles; Compose v2 starts these).
    let started = |with: &[&str]| -> BTreeSet<&str> {
        all.services
            .iter()
            .filter(|(_, s)| active(s, with))
            .map(|(n, _)| n.as_str())
            .collect()
    };
    let expected =
        |extra: &[&'static str]| -> BTreeSet<&str> { plain.iter().chain(extra).copied().collect() };
    for (with, extra) in [
        (&[][..], &[][..]),
        (&["cluster"], &["herald-1", "herald-2", "nginx"]),
        (&["monitoring"], &["prometheus", "grafana"]),
        (
            &PROFILES,
            &["herald-1", "herald-2", "nginx", "prometheus", "grafana"],
        ),
    ] {
        ensure!(
            started(with) == expected(extra),
            "profiles {with:?} start {:?}",
            started(with)
        );
    }
    Ok(())
}

#[test]
fn every_long_running_service_has_a_healthcheck_and_a_restart_policy() -> Result<()> {
    let stack = Stack::all()?;
    let one_shots = stack.one_shots();
    ensure!(
        one_shots.contains("topic-init"),
        "topic-init is a one-shot job: {one_shots:?}"
    );
    for (name, service) in &stack.services {
        let restart = service["restart"].as_str().unwrap_or("no");
        if one_shots.contains(name) {
            // A job that is restarted after it succeeded would never "complete".
            ensure!(
                restart == "no" || restart.starts_with("on-failure"),
                "{name} is a one-shot job; restart is `{restart}`"
            );
            continue;
        }
        ensure!(
            healthcheck(service).is_some(),
            "{name} runs until stopped but has no healthcheck: {}",
            service["healthcheck"]
        );
        ensure!(
            matches!(restart, "always" | "unless-stopped") || restart.starts_with("on-failure"),
            "{name} runs until stopped but restart is `{restart}`"
        );
    }
    Ok(())
}

#[test]
fn depends_on_names_existing_services_with_conditions_they_can_meet() -> Result<()> {
    let stack = Stack::all()?;
    let one_shots = stack.one_shots();
    for (name, service) in &stack.services {
        for (dep, condition) in depends_on(service) {
            let target = stack
                .services
                .get(&dep)
                .ok_or_else(|| anyhow!("{name} depends on `{dep}`, which is no service"))?;
            match condition.as_str() {
                "service_started" => {}
                "service_healthy" => ensure!(
                    healthcheck(target).is_some(),
                    "{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
                ),
                "service_completed_successfully" => ensure!(
                    one_shots.contains(&dep) && target["restart"].as_str() != Some("always"),
                    "{name} waits for {dep} to complete, but {dep} is restarted"
                ),
                other => bail!("{name} depends on {dep} with unknown condition `{other}`"),
            }
            // Whatever starts a service starts what it waits for: a plain `up` must
            // not wait for a service only a profile starts, nor one profile for
            // another's service (Compose v2 refuses that).
            let mut starters: Vec<Vec<&str>> = vec![vec![]];
            starters.extend(PROFILES.iter().map(|p| vec![*p]));
            for with in starters {
                ensure!(
                    !active(service, &with) || active(target, &with),
                    "{name} starts with profiles {with:?} but depends on {dep}, which \
                     needs profiles {:?}",
                    profiles(target)
                );
            }
        }
    }
    // No cycle: every service can start.
    fn visit(
        stack: &Stack,
        name: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        ensure!(
            !path.iter().any(|p| p == name),
            "depends_on cycle: {} -> {name}",
            path.join(" -> ")
        );
        path.push(name.to_owned());
        for (dep, _) in depends_on(stack.service(name)?) {
            visit(stack, &dep, path, done)?;
        }
        path.pop();
        done.insert(name.to_owned());
        Ok(())
    }
    let mut done = BTreeSet::new();
    for name in stack.services.keys() {
        visit(&stack, name, &mut Vec::new(), &mut done)?;
    }
    Ok(())
}

/// Start-up order follows from the configuration: a Herald node waits, healthy, for
/// every server its bridges connect to, and for the job that creates every Kafka
/// topic it reads; each publisher waits for the server it publishes to.
#[test]
fn services_wait_for_the_servers_their_configuration_names() -> Result<()> {
    let stack = Stack::cluster()?;
    let nodes = stack.herald_nodes();
    ensure!(nodes.len() == 3, "herald nodes: {nodes:?}");
    for (name, node) in nodes {
        let config = effective_config(name, node)?;
        let deps: BTreeMap<String, String> = depends_on(node).into_iter().collect();
        let mut servers = BTreeSet::new();
        for bridge in bridges(&config, "nats") {
            let urls = bridge["url"].as_str().unwrap_or_default();
            servers.extend(urls.split(',').map(host_of));
        }
        for bridge in bridges(&config, "kafka") {
            let brokers = bridge["brokers"].as_str().unwrap_or_default();
            servers.extend(brokers.split(',').map(host_of));
            for topic in bridge["topics"].as_array().into_iter().flatten() {
                let topic = topic.as_str().unwrap_or_default();
                let creator = deps
                    .iter()
                    .filter(|(_, c)| *c == "service_completed_successfully")
                    .map(|(dep, _)| (dep, stack.service(dep)))
                    .find(|(_, job)| {
                        job.as_ref().is_ok_and(|job| {
                            let args =
                                [strings(&job["entrypoint"]), strings(&job["command"])].concat();
                            args.iter().any(|a| a == "--create")
                                && args.windows(2).any(|w| w[0] == "--topic" && w[1] == topic)
                        })
                    });
                ensure!(
                    creator.is_some(),
                    "{name} reads Kafka topic `{topic}` but waits for no job that creates it"
                );
            }
        }
        ensure!(!servers.is_empty(), "{name} has no bridge: {config:?}");
        for server in servers {
            ensure!(
                stack.services.contains_key(&server),
                "{name} connects to `{server}`, which is no service of the stack"
            );
            ensure!(
                deps.get(&server).map(String::as_str) == Some("service_healthy"),
                "{name} connects to {server} but does not wait for it to be healthy: {deps:?}"
            );
        }
    }
    for (name, service) in stack.herald_image() {
        let env = environment(service);
        let deps: BTreeMap<String, String> = depends_on(service).into_iter().collect();
        for var in ["NATS_URL", "KAFKA_BROKERS"] {
            let Some(address) = env_var(&env, var) else {
                continue;
            };
            for server in address.split(',').map(host_of) {
                ensure!(
                    deps.get(&server).map(String::as_str) == Some("service_healthy"),
                    "{name} publishes to {server} ({var}) but does not wait for it: {deps:?}"
                );
            }
        }
    }
    Ok(())
}

/// The demo publishers' health checks look for a name the publisher itself sets.
#[test]
fn publisher_healthchecks_match_the_examples() -> Result<()> {
    let stack = Stack::cluster()?;
    let mut publishers = 0;
    for (name, service) in stack.herald_image() {
        let Some(entrypoint) = strings(&service["entrypoint"]).first().cloned() else {
            continue;
        };
        publishers += 1;
        let source = read(&format!("examples/{entrypoint}.rs"))?;
        let test = healthcheck(service)
            .ok_or_else(|| anyhow!("{name} has no healthcheck"))?
            .join(" ");
        for word in test.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
            if word.starts_with("herald-demo-") {
                ensure!(
                    source.contains(&format!("\"{word}\"")),
                    "{name}'s healthcheck looks for `{word}`, which examples/{entrypoint}.rs \
                     does not set"
                );
            }
        }
    }
    ensure!(publishers == 2, "expected the two demo publishers");
    Ok(())
}

#[test]
fn herald_is_on_8080_and_the_load_balancer_on_8081() -> Result<()> {
    let stack = Stack::cluster()?;
    let herald = stack.service("herald")?;
    ensure!(
        published_ports(herald)? == [(8080, 8080)],
        "herald publishes {:?}",
        published_ports(herald)?
    );
    for (name, node) in stack.herald_nodes() {
        let config = effective_config(name, node)?;
        let listen = get_str(&config, "server.listen")?;
        ensure!(
            port_of(listen)? == 8080 && host_of(listen) == "0.0.0.0",
            "{name} listens on {listen}: unreachable from outside its container, or \
             not on the port the stack publishes"
        );
        let test = healthcheck(node)
            .ok_or_else(|| anyhow!("{name}: no healthcheck"))?
            .join(" ");
        ensure!(
            test.contains("http://127.0.0.1:8080/readyz"),
            "{name}'s healthcheck is not its /readyz: {test}"
        );
    }
    let nginx = stack.service("nginx")?;
    let conf = Nginx::load()?;
    let listen = conf.server_port()?;
    ensure!(
        published_ports(nginx)? == [(8081, listen)],
        "nginx publishes {:?}; nginx.conf listens on {listen}",
        published_ports(nginx)?
    );
    ensure!(
        mounts(nginx)
            .iter()
            .any(|m| m.source == repo_root().join("docker/nginx.conf")
                && m.target == "/etc/nginx/nginx.conf"
                && m.read_only),
        "nginx must mount docker/nginx.conf read-only at /etc/nginx/nginx.conf: {:?}",
        mounts(nginx)
    );
    // What the documentation tells people to run and open.
    let docs = read("docs/deployment.md")?;
    for needle in [
        "docker compose -f docker/compose.yaml up",
        "--profile cluster",
        "http://localhost:8080/",
        "http://localhost:8081/",
    ] {
        ensure!(
            docs.contains(needle),
            "docs/deployment.md does not say `{needle}`"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Herald's configuration in the stack

#[test]
fn every_herald_node_runs_the_repository_herald_toml_read_only_and_valid() -> Result<()> {
    let stack = Stack::cluster()?;
    let mut node_ids = BTreeSet::new();
    for (name, node) in stack.herald_nodes() {
        let (path, mount) = herald_config_file(name, node)?;
        ensure!(
            path == "/etc/herald/herald.toml",
            "{name} reads {path}, not /etc/herald/herald.toml"
        );
        ensure!(
            mount.source == repo_root().join("docker/herald.toml"),
            "{name} mounts {} instead of docker/herald.toml",
            mount.source.display()
        );
        ensure!(
            mount.source.is_file(),
            "{} is missing",
            mount.source.display()
        );
        ensure!(mount.read_only, "{name} must mount herald.toml read-only");
        let config = effective_config(name, node)?;
        let node_id = get_str(&config, "server.node_id")?.to_owned();
        ensure!(
            !node_id.is_empty(),
            "{name} has no server.node_id: its logs and welcome would show a random one"
        );
        ensure!(
            node_ids.insert(node_id.clone()),
            "node id {node_id} is used twice"
        );
        // Compose stops a container after stop_grace_period; Herald's own grace must
        // end first, so that clients get their 1001 and requests finish.
        let grace_ms = get_int(&config, "server.shutdown_grace_ms")?;
        let stop = node["stop_grace_period"].as_str().unwrap_or("10s");
        ensure!(
            duration_ms(stop)? > grace_ms,
            "{name}: stop_grace_period {stop} is not above shutdown_grace_ms {grace_ms}"
        );
    }
    Ok(())
}

/// A compose or nginx duration (`15s`, `1m30s`, `500ms`, `120`) in milliseconds.
fn duration_ms(text: &str) -> Result<i64> {
    let mut total = 0i64;
    let mut digits = String::new();
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_digit() {
                break;
            }
            unit.push(n);
            chars.next();
        }
        let n: i64 = digits
            .parse()
            .with_context(|| format!("duration `{text}`"))?;
        digits.clear();
        total += n * match unit.as_str() {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            other => bail!("unit `{other}` in duration `{text}`"),
        };
    }
    if !digits.is_empty() {
        // A bare number: seconds (nginx) .
        total += digits.parse::<i64>()? * 1000;
    }
    Ok(total)
}

/// The cluster nodes run herald.toml plus a backplane, and nothing else differs: the
/// list of NATS bridges they replace by environment must still hold herald.toml's.
#[test]
fn cluster_nodes_add_only_the_nats_backplane_to_herald_toml() -> Result<()> {
    let stack = Stack::cluster()?;
    let single = effective_config("herald", stack.service("herald")?)?;
    ensure!(
        get_str(&single, "cluster.backplane")?.is_empty(),
        "the single node needs no backplane"
    );
    let mut cluster_nodes = 0;
    for (name, node) in stack.herald_nodes() {
        if !profiles(node).contains(&"cluster".to_owned()) {
            continue;
        }
        cluster_nodes += 1;
        let mut config = effective_config(name, node)?;
        let backplane = get_str(&config, "cluster.backplane")?.to_owned();
        ensure!(!backplane.is_empty(), "{name} has no cluster.backplane");
        ensure!(
            get_str(&config, "cluster.history")? == "jetstream",
            "{name}: the cluster keeps its history in JetStream, so clients resume on \
             any node (tests/examples.rs rides a rolling restart on these settings)"
        );
        ensure!(
            !get_str(&config, "cluster.subject_prefix")?.is_empty(),
            "{name}: use a subject_prefix, so the backplane bridge does not subscribe to \
             every subject (docs/nats.md)"
        );
        // Behind nginx: its address, and only that, is trusted for X-Forwarded-For.
        let nginx = stack.service("nginx")?["networks"]["default"]["ipv4_address"]
            .as_str()
            .ok_or_else(|| anyhow!("nginx has no fixed ipv4_address"))?
            .to_owned();
        let trusted: Vec<String> = get(&config, "server.trusted_proxies")
            .and_then(|t| t.as_array())
            .map(|t| {
                t.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        ensure!(
            trusted == [nginx.clone()],
            "{name} trusts {trusted:?}; it must trust nginx ({nginx}) alone"
        );
        // Take away what a cluster node adds; the rest must be herald.toml as is.
        let mut expected = single.clone();
        for table in [&mut config, &mut expected] {
            table.remove("cluster");
            if let Some(server) = table.get_mut("server").and_then(|s| s.as_table_mut()) {
                server.remove("node_id");
                server.remove("trusted_proxies");
            }
        }
        let nats = config
            .get_mut("bridge")
            .and_then(|b| b.get_mut("nats"))
            .and_then(|n| n.as_array_mut())
            .ok_or_else(|| anyhow!("{name} has no NATS bridge"))?;
        let before = nats.len();
        nats.retain(|b| b.get("name").and_then(|n| n.as_str()) != Some(&backplane));
        ensure!(
            nats.len() + 1 == before,
            "{name}: backplane bridge `{backplane}` is not one [[bridge.nats]] entry"
        );
        ensure!(
            config == expected,
            "{name}'s configuration differs from docker/herald.toml beyond the \
             backplane; update x-cluster-env in {COMPOSE_FILE}.\n{name} (without the \
             backplane):\n{}\nherald.toml:\n{}",
            toml::to_string(&config)?,
            toml::to_string(&expected)?
        );
    }
    ensure!(cluster_nodes == 2, "expected two cluster nodes");
    Ok(())
}

// ---------------------------------------------------------------------------------
// The `monitoring` profile: Prometheus and Grafana

/// The host file behind `target` in a service: the source of the bind mount at
/// `target`, or below a mounted folder; the mount must be read-only.
fn host_file(name: &str, service: &Value, target: &str) -> Result<PathBuf> {
    for m in mounts(service) {
        let dir = format!("{}/", m.target.trim_end_matches('/'));
        let path = if m.target == target {
            m.source.clone()
        } else if let Some(rest) = target.strip_prefix(&dir) {
            m.source.join(rest)
        } else {
            continue;
        };
        ensure!(
            m.read_only,
            "{name} must mount {} read-only",
            m.source.display()
        );
        ensure!(
            path.exists(),
            "{name} reads {target}, which is {}: missing",
            path.display()
        );
        return Ok(path);
    }
    bail!(
        "{name}: nothing is mounted at {target}: {:?}",
        mounts(service)
    )
}

fn read_yaml(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    yaml_serde::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// The files of a folder whose names end with one of `extensions`, sorted.
fn files_in(dir: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        let name = path.to_string_lossy().into_owned();
        if path.is_file() && extensions.iter().any(|e| name.ends_with(e)) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The value of a `--name=value` or `--name value` flag.
fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix(name) {
            Some(rest) if rest.starts_with('=') => Some(rest[1..].to_owned()),
            Some("") => args.get(i + 1).cloned(),
            _ => None,
        })
}

/// Prometheus in the stack: its service, the port it listens on, the container path
/// and the parsed contents of its configuration file.
struct Prometheus<'a> {
    service: &'a Value,
    port: u16,
    config_path: String,
    config: Value,
}

impl<'a> Prometheus<'a> {
    fn load(stack: &'a Stack) -> Result<Prometheus<'a>> {
        let service = stack.service("prometheus")?;
        let command = [
            strings(&service["entrypoint"]),
            strings(&service["command"]),
        ]
        .concat();
        let config_path = flag(&command, "--config.file")
            .ok_or_else(|| anyhow!("prometheus: no --config.file in {command:?}"))?;
        let listen = flag(&command, "--web.listen-address").unwrap_or_else(|| ":9090".into());
        let config = read_yaml(&host_file("prometheus", service, &config_path)?)?;
        Ok(Prometheus {
            service,
            port: port_of(&listen)?,
            config_path,
            config,
        })
    }

    /// The scrape job named `herald`.
    fn herald_job(&self) -> Result<&Value> {
        self.config["scrape_configs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|job| job["job_name"].as_str() == Some("herald"))
            .ok_or_else(|| anyhow!("docker/prometheus.yml has no scrape job `herald`"))
    }
}

/// The `host:port` targets of a scrape job: static ones, and DNS names with their
/// port (type A; the default, SRV, would ignore the port).
fn scrape_targets(job: &Value) -> Result<BTreeSet<String>> {
    let mut targets = BTreeSet::new();
    for sd in job["static_configs"].as_array().into_iter().flatten() {
        targets.extend(strings(&sd["targets"]));
    }
    for sd in job["dns_sd_configs"].as_array().into_iter().flatten() {
        ensure!(
            sd["type"].as_str() == Some("A"),
            "dns_sd_configs without `type: A` looks up SRV records, which compose \
             does not serve: {sd}"
        );
        let port = sd["port"]
            .as_u64()
            .ok_or_else(|| anyhow!("dns_sd_configs of type A needs a port: {sd}"))?;
        targets.extend(strings(&sd["names"]).iter().map(|n| format!("{n}:{port}")));
    }
    let other: Vec<&String> = job
        .as_object()
        .into_iter()
        .flat_map(|o| o.keys())
        .filter(|k| k.ends_with("_sd_configs") && *k != "dns_sd_configs")
        .collect();
    ensure!(
        other.is_empty(),
        "this test knows static_configs and dns_sd_configs, not {other:?}; extend it"
    );
    Ok(targets)
}

/// The address a Herald node serves `/metrics` on, as `service:port`:
/// `server.admin_listen` when set, else `server.listen`.
fn metrics_address(name: &str, node: &Value) -> Result<String> {
    let config = effective_config(name, node)?;
    let admin = get_str(&config, "server.admin_listen")?;
    let listen = if admin.is_empty() {
        get_str(&config, "server.listen")?
    } else {
        admin
    };
    Ok(format!("{name}:{}", port_of(listen)?))
}

#[test]
fn prometheus_scrapes_every_herald_node_where_it_serves_metrics() -> Result<()> {
    let stack = Stack::all()?;
    let prometheus = Prometheus::load(&stack)?;
    let job = prometheus.herald_job()?;
    ensure!(
        job["metrics_path"].as_str().unwrap_or("/metrics") == "/metrics"
            && job["scheme"].as_str().unwrap_or("http") == "http",
        "the herald job must scrape http://…/metrics: {job}"
    );
    let targets = scrape_targets(job)?;
    // Every Herald node of every profile is a target, and nothing else is: a name
    // that a profile does not start resolves to nothing, and is no target then.
    let mut nodes = BTreeMap::new();
    for (name, node) in stack.herald_nodes() {
        nodes.insert(metrics_address(name, node)?, node);
    }
    ensure!(
        targets == nodes.keys().cloned().collect(),
        "Prometheus scrapes {targets:?}; the stack's Herald nodes serve /metrics on {:?}",
        nodes.keys().collect::<Vec<_>>()
    );
    ensure!(
        targets.contains("herald:8080")
            && targets.contains("herald-1:8080")
            && targets.contains("herald-2:8080"),
        "{targets:?}"
    );
    // With the profiles that start Prometheus, it scrapes every node they start.
    for with in [
        &["monitoring"][..],
        &["cluster", "monitoring"],
        &[],
        &["cluster"],
    ] {
        let monitored = with.contains(&"monitoring");
        ensure!(
            active(prometheus.service, with) == monitored
                && active(stack.service("grafana")?, with) == monitored,
            "Prometheus and Grafana start with the `monitoring` profile, and only then"
        );
        if !monitored {
            continue;
        }
        for (address, node) in &nodes {
            ensure!(
                !active(node, with) || targets.contains(address),
                "with profiles {with:?} {address} runs but is not scraped"
            );
        }
    }

    // The rule files sit where the configuration names them (relative to itself).
    let dir = prometheus
        .config_path
        .rsplit_once('/')
        .map_or("", |(d, _)| d);
    let rule_files = strings(&prometheus.config["rule_files"]);
    ensure!(
        !rule_files.is_empty(),
        "docker/prometheus.yml loads no alert rules"
    );
    for file in rule_files {
        ensure!(!file.contains('*'), "name rule files one by one: {file}");
        let path = if file.starts_with('/') {
            file.clone()
        } else {
            format!("{dir}/{file}")
        };
        let host = host_file("prometheus", prometheus.service, &path)?;
        ensure!(
            host.parent() == Some(repo_root().join("docker").as_path()),
            "{} should be beside docker/prometheus.yml, so that promtool finds it too",
            host.display()
        );
        let rules = read_yaml(&host)?;
        ensure!(
            rules["groups"].as_array().is_some_and(|g| !g.is_empty()),
            "{} has no rule groups",
            host.display()
        );
    }

    // Port, health check.
    ensure!(
        published_ports(prometheus.service)? == [(9090, prometheus.port)],
        "prometheus publishes {:?}",
        published_ports(prometheus.service)?
    );
    let test = healthcheck(prometheus.service)
        .ok_or_else(|| anyhow!("prometheus: no healthcheck"))?
        .join(" ");
    ensure!(
        test.contains(&format!("http://127.0.0.1:{}/-/ready", prometheus.port))
            || test.contains(&format!("http://127.0.0.1:{}/-/healthy", prometheus.port)),
        "prometheus's healthcheck is not its /-/ready: {test}"
    );
    // prom/prometheus is busybox-based: it has wget and no curl.
    ensure!(
        !test.contains("curl"),
        "the Prometheus image has no curl: {test}"
    );

    // What the documentation tells people to run and open.
    let docs = read("docs/deployment.md")?;
    for needle in [
        "docker compose -f docker/compose.yaml --profile monitoring up",
        "http://localhost:9090/",
        "http://localhost:3000/",
    ] {
        ensure!(
            docs.contains(needle),
            "docs/deployment.md does not say `{needle}`"
        );
    }
    Ok(())
}

#[test]
fn grafana_is_provisioned_with_the_stacks_prometheus_and_the_herald_dashboard() -> Result<()> {
    let stack = Stack::all()?;
    let prometheus = Prometheus::load(&stack)?;
    let grafana = stack.service("grafana")?;
    let provisioning = "/etc/grafana/provisioning";

    // The data source: the stack's Prometheus, which Grafana waits for.
    let dir = host_file("grafana", grafana, &format!("{provisioning}/datasources"))?;
    let mut sources = Vec::new();
    for file in files_in(&dir, &[".yml", ".yaml"])? {
        let doc = read_yaml(&file)?;
        ensure!(doc["apiVersion"] == 1, "{}: apiVersion 1", file.display());
        sources.extend(doc["datasources"].as_array().into_iter().flatten().cloned());
    }
    let [source] = &sources[..] else {
        bail!("expected one provisioned data source, found {sources:?}");
    };
    ensure!(source["type"] == "prometheus", "{source}");
    let url = source["url"].as_str().unwrap_or_default();
    ensure!(
        url.starts_with("http://")
            && host_of(url) == "prometheus"
            && port_of(url)? == prometheus.port,
        "the data source's url {url} is not the stack's Prometheus on port {}",
        prometheus.port
    );
    let deps: BTreeMap<String, String> = depends_on(grafana).into_iter().collect();
    ensure!(
        deps.get("prometheus").map(String::as_str) == Some("service_healthy"),
        "grafana should wait for prometheus to be healthy: {deps:?}"
    );

    // The dashboards: every file provider's folder is mounted and holds the
    // dashboard, valid JSON with a fixed uid.
    let dir = host_file("grafana", grafana, &format!("{provisioning}/dashboards"))?;
    let mut dashboards = BTreeMap::new();
    for file in files_in(&dir, &[".yml", ".yaml"])? {
        let doc = read_yaml(&file)?;
        ensure!(doc["apiVersion"] == 1, "{}: apiVersion 1", file.display());
        for provider in doc["providers"].as_array().into_iter().flatten() {
            ensure!(provider["type"] == "file", "{provider}");
            let path = provider["options"]["path"]
                .as_str()
                .ok_or_else(|| anyhow!("provider without options.path: {provider}"))?;
            let folder = host_file("grafana", grafana, path)?;
            for json in files_in(&folder, &[".json"])? {
                let text = std::fs::read_to_string(&json)?;
                let dashboard: Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not valid JSON", json.display()))?;
                ensure!(
                    dashboard["uid"].as_str().is_some_and(|u| !u.is_empty())
                        && dashboard["panels"]
                            .as_array()
                            .is_some_and(|p| !p.is_empty()),
                    "{}: a dashboard with a uid and panels",
                    json.display()
                );
                let container = format!(
                    "{}/{}",
                    path.trim_end_matches('/'),
                    json.file_name().unwrap_or_default().to_string_lossy()
                );
                dashboards.insert(container, dashboard);
            }
        }
    }
    let herald = dashboards
        .iter()
        .find(|(_, d)| d["uid"] == "herald")
        .map(|(path, _)| path.clone())
        .ok_or_else(|| {
            anyhow!(
                "no dashboard with uid `herald` is provisioned: {:?}",
                dashboards.keys()
            )
        })?;
    ensure!(
        host_file("grafana", grafana, &herald)?
            == repo_root().join("docker/grafana/dashboards/herald.json"),
        "the provisioned Herald dashboard is not docker/grafana/dashboards/herald.json"
    );
    // Grafana opens on it.
    let env = environment(grafana);
    ensure!(
        env_var(&env, "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") == Some(herald.as_str()),
        "Grafana's home dashboard should be {herald}: {env:?}"
    );
    // Its panels ask the data source variable for a Prometheus.
    let variables = dashboards[&herald]["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == source["type"]),
        "the dashboard has no data source variable of type prometheus"
    );

    // Port, health check.
    ensure!(
        published_ports(grafana)? == [(3000, 3000)],
        "grafana publishes {:?}",
        published_ports(grafana)?
    );
    let test = healthcheck(grafana)
        .ok_or_else(|| anyhow!("grafana: no healthcheck"))?
        .join(" ");
    ensure!(
        test.contains("http://127.0.0.1:3000/api/health"),
        "grafana's healthcheck is not its /api/health: {test}"
    );
    Ok(())
}

/// A pulled image names its version: `up` next month runs what the tests checked.
#[test]
fn every_pulled_image_is_pinned_to_a_version() -> Result<()> {
    let stack = Stack::all()?;
    for (name, service) in &stack.services {
        if service.get("build").is_some() {
            continue;
        }
        let image = service["image"]
            .as_str()
            .ok_or_else(|| anyhow!("{name} has neither an image nor a build"))?;
        let last = image.rsplit('/').next().unwrap_or(image);
        let tag = last.split_once(':').map(|(_, t)| t).unwrap_or_default();
        ensure!(
            tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
            "{name} runs {image}: pin it to a version tag"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// The Dockerfile

/// One instruction of a Dockerfile, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    /// Index of the build stage (FROM) it belongs to.
    stage: usize,
    keyword: String,
    args: String,
}

/// The instructions of docker/Dockerfile, and the stages as (image, name).
struct Dockerfile {
    instructions: Vec<Instruction>,
    stages: Vec<(String, String)>,
}

impl Dockerfile {
    fn load() -> Result<Dockerfile> {
        let text = read("docker/Dockerfile")?;
        let mut logical = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            // Comments, also those between continuation lines, are dropped.
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(part) => {
                    current.push_str(part);
                    current.push(' ');
                }
                None => {
                    current.push_str(trimmed);
                    logical.push(std::mem::take(&mut current));
                }
            }
        }
        ensure!(current.is_empty(), "Dockerfile ends in a continuation line");
        let mut instructions = Vec::new();
        let mut stages = Vec::new();
        for line in logical {
            let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            let keyword = keyword.to_ascii_uppercase();
            let args = args.trim().to_owned();
            if keyword == "FROM" {
                let words: Vec<&str> = args.split_whitespace().collect();
                let name = match words.as_slice() {
                    [image, as_, name] if as_.eq_ignore_ascii_case("as") => {
                        (image.to_string(), name.to_string())
                    }
                    [image] => (image.to_string(), String::new()),
                    _ => bail!("cannot read `FROM {args}`"),
                };
                stages.push(name);
            }
            ensure!(!stages.is_empty(), "`{keyword}` before the first FROM");
            instructions.push(Instruction {
                stage: stages.len() - 1,
                keyword,
                args,
            });
        }
        Ok(Dockerfile {
            instructions,
            stages,
        })
    }

    fn stage_index(&self, name: &str) -> Result<usize> {
        self.stages
            .iter()
            .position(|(_, n)| n == name)
            .ok_or_else(|| anyhow!("no stage named `{name}`"))
    }

    fn runtime(&self) -> usize {
        self.stages.len() - 1
    }

    fn in_stage<'a>(
        &'a self,
        stage: usize,
        keyword: &'a str,
    ) -> impl Iterator<Item = &'a Instruction> + 'a {
        self.instructions
            .iter()
            .filter(move |i| i.stage == stage && i.keyword == keyword)
    }

    /// `COPY` instructions as (stage, `--from` stage or None, sources, destination).
    fn copies(&self) -> Vec<(usize, Option<String>, Vec<String>, String)> {
        self.instructions
            .iter()
            .filter(|i| i.keyword == "COPY")
            .map(|i| {
                let mut from = None;
                let mut paths = Vec::new();
                for word in i.args.split_whitespace() {
                    if let Some(f) = word.strip_prefix("--from=") {
                        from = Some(f.to_owned());
                    } else if !word.starts_with("--") {
                        paths.push(word.to_owned());
                    }
                }
                let dest = paths.pop().unwrap_or_default();
                (i.stage, from, paths, dest)
            })
            .collect()
    }
}

/// A JSON-array (exec form) instruction argument.
fn exec_form(args: &str) -> Result<Vec<String>> {
    serde_json::from_str(args).with_context(|| format!("not an exec-form array: {args}"))
}

/// The packages of the workspace: name → directory.
fn workspace_packages() -> Result<BTreeMap<String, String>> {
    let workspace = read_toml("Cargo.toml")?;
    let members = get(&workspace, "workspace.members")
        .and_then(|m| m.as_array())
        .ok_or_else(|| anyhow!("no workspace.members"))?;
    let mut packages = BTreeMap::new();
    for member in members {
        let dir = member.as_str().unwrap_or_default().to_owned();
        let manifest = read_toml(&format!("{dir}/Cargo.toml"))?;
        let name = get_str(&manifest, "package.name")?.to_owned();
        packages.insert(name, dir);
    }
    Ok(packages)
}

/// Target names of one kind (`bin`, `example`) declared in a package's manifest.
fn targets(dir: &str, kind: &str) -> Result<BTreeSet<String>> {
    let manifest = read_toml(&format!("{dir}/Cargo.toml"))?;
    Ok(manifest
        .get(kind)
        .and_then(|t| t.as_array())
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("name").and_then(|n| n.as_str()))
        .map(str::to_owned)
        .collect())
}

#[test]
fn dockerfile_builds_in_a_rust_stage_and_runs_as_non_root_on_debian_slim() -> Result<()> {
    let dockerfile = Dockerfile::load()?;
    ensure!(
        dockerfile.stages.len() >= 2,
        "the Dockerfile must be multi-stage: {:?}",
        dockerfile.stages
    );
    let build = dockerfile.stage_index("build")?;
    let (build_image, _) = &dockerfile.stages[build];
    let (runtime_image, _) = &dockerfile.stages[dockerfile.runtime()];
    // The build image's Rust is at least the workspace's rust-version, and the
    // runtime is the same Debian release, so the glibc the binaries need is there.
    let tag = build_image
        .strip_prefix("rust:")
        .ok_or_else(|| anyhow!("the build stage is not the rust image: {build_image}"))?;
    let (version, release) = tag
        .split_once('-')
        .ok_or_else(|| anyhow!("pin the rust image to a version and release: {tag}"))?;
    let workspace = read_toml("Cargo.toml")?;
    let minimum = get_str(&workspace, "workspace.package.rust-version")?;
    let parse = |v: &str| -> Vec<u32> { v.split('.').filter_map(|p| p.parse().ok()).collect() };
    ensure!(
        parse(version) >= parse(minimum),
        "rust:{version} is older than the workspace's rust-version {minimum}"
    );
    ensure!(
        runtime_image == &format!("debian:{release}-slim"),
        "the runtime stage should be debian:{release}-slim (the build image's release), \
         not {runtime_image}"
    );

    let runtime = dockerfile.runtime();
    let user = dockerfile
        .in_stage(runtime, "USER")
        .last()
        .ok_or_else(|| anyhow!("the runtime stage has no USER: it would run as root"))?;
    let name = user.args.split(':').next().unwrap_or_default();
    ensure!(
        !matches!(name, "" | "root" | "0"),
        "the runtime stage runs as `{}`",
        user.args
    );

    let exposed: Vec<&str> = dockerfile
        .in_stage(runtime, "EXPOSE")
        .flat_map(|i| i.args.split_whitespace())
        .collect();
    ensure!(exposed == ["8080"], "EXPOSE {exposed:?}, expected 8080");
    let health = dockerfile
        .in_stage(runtime, "HEALTHCHECK")
        .last()
        .ok_or_else(|| anyhow!("the runtime stage has no HEALTHCHECK"))?;
    ensure!(
        health.args.contains("http://127.0.0.1:8080/healthz"),
        "the HEALTHCHECK does not ask the exposed port's /healthz: {}",
        health.args
    );
    // The check's tool is installed in the runtime stage.
    let tool = health
        .args
        .split_once("CMD")
        .map(|(_, cmd)| cmd.trim())
        .and_then(|cmd| exec_form(cmd).ok())
        .and_then(|cmd| cmd.first().cloned())
        .ok_or_else(|| anyhow!("HEALTHCHECK without an exec-form CMD: {}", health.args))?;
    ensure!(
        dockerfile
            .in_stage(runtime, "RUN")
            .any(|i| i.args.contains("apt-get install") && i.args.contains(&tool)),
        "the HEALTHCHECK runs `{tool}`, which the runtime stage does not install"
    );
    let entrypoint = dockerfile
        .in_stage(runtime, "ENTRYPOINT")
        .last()
        .ok_or_else(|| anyhow!("no ENTRYPOINT"))?;
    ensure!(
        exec_form(&entrypoint.args)? == ["herald"],
        "ENTRYPOINT {}",
        entrypoint.args
    );
    Ok(())
}

#[test]
fn dockerfile_copies_exactly_the_binaries_its_build_stage_builds() -> Result<()> {
    let dockerfile = Dockerfile::load()?;
    let build = dockerfile.stage_index("build")?;
    let runs: Vec<&Instruction> = dockerfile.in_stage(build, "RUN").collect();
    let cargo = runs
        .iter()
        .find(|i| i.args.contains("cargo build"))
        .ok_or_else(|| anyhow!("the build stage runs no `cargo build`"))?;
    // The cargo command alone, up to the next `&&` of the RUN line.
    let command = cargo.args[cargo.args.find("cargo build").unwrap_or(0)..]
        .split("&&")
        .next()
        .unwrap_or_default();
    let words: Vec<&str> = command.split_whitespace().collect();
    for flag in ["--release", "--locked"] {
        ensure!(words.contains(&flag), "cargo build without {flag}");
    }
    let after = |flag: &str| -> Vec<String> {
        words
            .windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].to_owned())
            .collect()
    };
    let packages = workspace_packages()?;
    for package in after("-p") {
        ensure!(
            packages.contains_key(&package),
            "cargo build -p {package}: no such workspace package"
        );
    }
    let herald_bins = targets(&packages["herald-broker"], "bin")?;
    let examples = targets(&packages["herald-examples"], "example")?;
    let mut built = BTreeMap::new();
    for bin in after("--bin") {
        ensure!(
            herald_bins.contains(&bin),
            "--bin {bin}: not a binary of package herald-broker ({herald_bins:?})"
        );
        built.insert(bin.clone(), format!("target/release/{bin}"));
    }
    for example in after("--example") {
        ensure!(
            examples.contains(&example),
            "--example {example}: not an example in examples/Cargo.toml ({examples:?})"
        );
        built.insert(
            example.clone(),
            format!("target/release/examples/{example}"),
        );
    }
    ensure!(
        built.contains_key("herald"),
        "the image must contain herald"
    );

    // Each binary leaves the cache-mounted target/ for /out in the same RUN, and the
    // runtime stage copies exactly those from /out.
    let mut copied = BTreeSet::new();
    for (stage, from, sources, dest) in dockerfile.copies() {
        if stage != dockerfile.runtime() {
            continue;
        }
        let from = from.ok_or_else(|| anyhow!("the runtime stage copies from the context"))?;
        ensure!(from == "build", "the runtime stage copies from `{from}`");
        ensure!(
            dest.starts_with("/usr/local/bin"),
            "binaries go to {dest}, not on PATH"
        );
        for source in sources {
            let name = source
                .strip_prefix("/out/")
                .ok_or_else(|| anyhow!("copies {source}, not a built binary in /out"))?;
            let path = built
                .get(name)
                .ok_or_else(|| anyhow!("copies /out/{name}, which cargo build does not build"))?;
            ensure!(
                cargo.args.contains(path.as_str()) && cargo.args.contains("/out"),
                "the build stage does not copy {path} to /out"
            );
            copied.insert(name.to_owned());
        }
    }
    let built: BTreeSet<String> = built.into_keys().collect();
    ensure!(
        copied == built,
        "built {built:?} but the runtime stage copies {copied:?}"
    );

    // Every binary the stack runs is in the image.
    let stack = Stack::cluster()?;
    for (name, service) in stack.herald_image() {
        ensure!(
            service["image"].as_str() == Some("herald:local"),
            "{name} builds docker/Dockerfile under another name: {}",
            service["image"]
        );
        if let Some(program) = strings(&service["entrypoint"]).first() {
            ensure!(
                copied.contains(program),
                "{name} runs `{program}`, which the image does not contain ({copied:?})"
            );
        }
    }
    Ok(())
}

/// `.dockerignore` patterns as (negated, pattern); a small matcher for the forms it
/// uses: `dir/`, `path`, `**/name`.
fn dockerignore() -> Result<Vec<(bool, String)>> {
    Ok(read(".dockerignore")?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.strip_prefix('!') {
            Some(p) => (true, p.trim_matches('/').to_owned()),
            None => (false, l.trim_matches('/').to_owned()),
        })
        .collect())
}

/// Whether `.dockerignore` keeps `path` (relative, `/`-separated) out of the context.
fn ignored(patterns: &[(bool, String)], path: &str) -> Result<bool> {
    let parts: Vec<&str> = path.split('/').collect();
    let mut out = false;
    for (negated, pattern) in patterns {
        ensure!(
            !pattern.contains('*') || (pattern.starts_with("**/") && !pattern[3..].contains('*')),
            "the matcher in tests/compose.rs does not know `{pattern}`; extend it"
        );
        let matches = match pattern.strip_prefix("**/") {
            Some(name) => parts.contains(&name),
            None => {
                let p: Vec<&str> = pattern.split('/').collect();
                parts.len() >= p.len() && parts[..p.len()] == p[..]
            }
        };
        if matches {
            out = !negated;
        }
    }
    Ok(out)
}

/// Files named by `include_str!`/`include_bytes!` under `dir`, relative to the root.
fn included_files(dir: &Path, found: &mut BTreeSet<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.is_dir() {
            if !matches!(name, "target" | "node_modules") {
                included_files(&path, found)?;
            }
            continue;
        }
        if !name.ends_with(".rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for macro_ in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in text.match_indices(macro_) {
                let rest = &text[at + macro_.len()..];
                let relative = rest.split('"').next().unwrap_or_default();
                let file = path.parent().unwrap_or(dir).join(relative).canonicalize()?;
                let file = file
                    .strip_prefix(repo_root())?
                    .to_string_lossy()
                    .into_owned();
                found.insert(file);
            }
        }
    }
    Ok(())
}

#[test]
fn the_build_context_keeps_everything_cargo_reads() -> Result<()> {
    let patterns = dockerignore()?;
    // What must stay out: the build output (gigabytes) and history.
    for path in ["target/debug/herald", ".git/HEAD"] {
        ensure!(
            ignored(&patterns, path)?,
            ".dockerignore should keep {path} out of the build context"
        );
    }
    // What cargo reads: the manifests, every workspace member, and every file the
    // sources include.
    let mut needed: BTreeSet<String> = ["Cargo.toml", "Cargo.lock"].map(str::to_owned).into();
    let mut included = BTreeSet::new();
    for dir in workspace_packages()?.into_values() {
        needed.insert(format!("{dir}/Cargo.toml"));
        included_files(&repo_root().join(&dir), &mut included)?;
    }
    ensure!(
        included.contains("broker/assets/index.html"),
        "the include_str! scan found nothing: {included:?}"
    );
    needed.extend(included);
    let dockerfile = Dockerfile::load()?;
    for (_, from, sources, _) in dockerfile.copies() {
        if from.is_some() {
            continue;
        }
        for source in sources {
            let source = source.trim_start_matches("./").trim_end_matches('/');
            ensure!(
                repo_root().join(source).exists(),
                "the Dockerfile copies `{source}`, which does not exist"
            );
            if source.is_empty() || source == "." {
                continue;
            }
            ensure!(
                !ignored(&patterns, source)?,
                "the Dockerfile copies `{source}`, which .dockerignore leaves out"
            );
        }
    }
    for path in needed {
        ensure!(
            repo_root().join(&path).exists(),
            "{path} is needed but missing"
        );
        ensure!(
            !ignored(&patterns, &path)?,
            "the build reads {path}, but .dockerignore leaves it out of the context"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// nginx

/// docker/nginx.conf as directives: (enclosing blocks, name, arguments).
struct Nginx {
    directives: Vec<(Vec<String>, String, Vec<String>)>,
}

impl Nginx {
    fn load() -> Result<Nginx> {
        let text = read("docker/nginx.conf")?;
        let mut directives = Vec::new();
        let mut blocks: Vec<String> = Vec::new();
        let mut words: Vec<String> = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '#' => {
                    for n in chars.by_ref() {
                        if n == '\n' {
                            break;
                        }
                    }
                }
                '\'' | '"' => {
                    let mut word = String::new();
                    for n in chars.by_ref() {
                        if n == c {
                            break;
                        }
                        word.push(n);
                    }
                    words.push(word);
                }
                ';' => {
                    ensure!(!words.is_empty(), "empty directive in nginx.conf");
                    let name = words.remove(0);
                    directives.push((blocks.clone(), name, std::mem::take(&mut words)));
                }
                '{' => {
                    ensure!(!words.is_empty(), "block without a name in nginx.conf");
                    blocks.push(std::mem::take(&mut words).join(" "));
                }
                '}' => {
                    ensure!(blocks.pop().is_some(), "unbalanced `}}` in nginx.conf");
                }
                c if c.is_whitespace() => {}
                c => {
                    let mut word = c.to_string();
                    while let Some(&n) = chars.peek() {
                        if n.is_whitespace() || matches!(n, ';' | '{' | '}') {
                            break;
                        }
                        word.push(n);
                        chars.next();
                    }
                    words.push(word);
                }
            }
        }
        ensure!(
            blocks.is_empty() && words.is_empty(),
            "nginx.conf is cut short"
        );
        Ok(Nginx { directives })
    }

    /// Directives named `name` whose innermost block starts with `block`.
    fn find<'a>(
        &'a self,
        block: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a (Vec<String>, String, Vec<String>)> + 'a {
        self.directives.iter().filter(move |(blocks, n, _)| {
            n == name && blocks.last().is_some_and(|b| b.starts_with(block))
        })
    }

    /// Values of directive `name` in the block that starts with `block`, as one
    /// string per use.
    fn values(&self, block: &str, name: &str) -> Vec<String> {
        self.find(block, name)
            .map(|(_, _, args)| args.join(" "))
            .collect()
    }

    fn server_port(&self) -> Result<u16> {
        let listen = self
            .find("server", "listen")
            .next()
            .ok_or_else(|| anyhow!("nginx.conf: no `listen` in the server block"))?;
        let address = &listen.2[0];
        address
            .rsplit(':')
            .next()
            .unwrap_or(address)
            .parse()
            .with_context(|| format!("nginx listen {address}"))
    }
}

#[test]
fn nginx_passes_websocket_upgrades_to_every_cluster_node() -> Result<()> {
    let conf = Nginx::load()?;
    let stack = Stack::cluster()?;
    let locations: Vec<String> = conf
        .find("location", "proxy_pass")
        .map(|(blocks, _, _)| blocks.last().cloned().unwrap_or_default())
        .collect();
    ensure!(!locations.is_empty(), "nginx.conf proxies nothing");
    // Values of a directive inside the WebSocket location (`location /`).
    let values = |name: &str| conf.values("location /", name);
    ensure!(
        values("proxy_http_version") == ["1.1"],
        "WebSocket upgrades need proxy_http_version 1.1"
    );
    let headers = values("proxy_set_header");
    ensure!(
        headers.contains(&"Upgrade $http_upgrade".to_owned()),
        "nginx must pass the Upgrade header on: {headers:?}"
    );
    let connection = headers
        .iter()
        .find_map(|h| h.strip_prefix("Connection "))
        .ok_or_else(|| anyhow!("nginx must set the Connection header: {headers:?}"))?;
    // `upgrade` itself, or a variable mapped from $http_upgrade to `upgrade`.
    if connection != "upgrade" {
        let map = format!("map $http_upgrade {connection}");
        ensure!(
            conf.find(&map, "default")
                .any(|(_, _, args)| args == &["upgrade"]),
            "Connection is set to {connection}, which no `map $http_upgrade` makes `upgrade`"
        );
    }
    ensure!(
        values("proxy_buffering") == ["off"],
        "events must not wait in proxy buffers"
    );

    // The proxy's idle timeouts stay above Herald's heartbeat: a quiet but healthy
    // connection carries a client message at least every interval + timeout.
    let (name, node) = stack
        .herald_nodes()
        .into_iter()
        .find(|(_, s)| profiles(s).contains(&"cluster".to_owned()))
        .ok_or_else(|| anyhow!("no cluster node"))?;
    let config = effective_config(name, node)?;
    let silence = get_int(&config, "session.heartbeat_interval_ms")?
        + get_int(&config, "session.heartbeat_timeout_ms")?;
    for timeout in ["proxy_read_timeout", "proxy_send_timeout"] {
        let value = values(timeout);
        ensure!(
            value.len() == 1,
            "nginx.conf must set {timeout} once: {value:?}"
        );
        ensure!(
            duration_ms(&value[0])? > silence,
            "{timeout} {} is not above Herald's heartbeat interval + timeout ({silence} ms)",
            value[0]
        );
    }

    // Server-Sent Events: its own location, never buffered or cached, open longer
    // than Herald's ping interval, with a reusable (not upgraded) connection.
    let sse = |name: &str| conf.values("location = /sse", name);
    ensure!(
        sse("proxy_pass") == ["http://herald"],
        "nginx.conf has no `location = /sse`"
    );
    ensure!(
        sse("proxy_http_version") == ["1.1"],
        "SSE needs proxy_http_version 1.1"
    );
    ensure!(
        sse("proxy_buffering") == ["off"],
        "SSE messages must not wait in proxy buffers"
    );
    ensure!(
        sse("proxy_cache") == ["off"],
        "an event stream must never be cached"
    );
    let headers = sse("proxy_set_header");
    ensure!(
        headers
            .iter()
            .any(|h| matches!(h.trim(), "Connection" | "Connection ''")),
        "SSE: an empty Connection header, so that the upstream connection is kept: {headers:?}"
    );
    let interval = get_int(&config, "session.heartbeat_interval_ms")?;
    for timeout in ["proxy_read_timeout", "proxy_send_timeout"] {
        let value = sse(timeout);
        ensure!(value.len() == 1, "SSE: set {timeout} once: {value:?}");
        ensure!(
            duration_ms(&value[0])? > interval,
            "SSE: {timeout} {} is not above Herald's ping interval ({interval} ms)",
            value[0]
        );
    }

    // The upstream is every cluster node, on the port it listens on.
    let mut expected = BTreeSet::new();
    for (name, node) in stack.herald_nodes() {
        if profiles(node).contains(&"cluster".to_owned()) {
            let config = effective_config(name, node)?;
            expected.insert(format!(
                "{name}:{}",
                port_of(get_str(&config, "server.listen")?)?
            ));
        }
    }
    let upstream: BTreeSet<String> = conf
        .find("upstream", "server")
        .map(|(_, _, args)| args[0].clone())
        .collect();
    ensure!(
        upstream == expected,
        "the nginx upstream is {upstream:?}, the cluster nodes are {expected:?}"
    );
    let pass = conf
        .find("location", "proxy_pass")
        .map(|(_, _, args)| args[0].clone())
        .collect::<Vec<_>>();
    let upstream_name = conf
        .directives
        .iter()
        .flat_map(|(blocks, _, _)| blocks.iter())
        .find_map(|b| b.strip_prefix("upstream "))
        .ok_or_else(|| anyhow!("no upstream block"))?;
    ensure!(
        pass.iter().all(|p| p == &format!("http://{upstream_name}")),
        "proxy_pass {pass:?} is not the upstream {upstream_name}"
    );
    Ok(())
}

/// Tickets travel in the upgrade's query string (`/ws?ticket=…`), so the proxy's
/// access log must record paths without it.
#[test]
fn nginx_access_log_leaves_out_query_strings() -> Result<()> {
    let conf = Nginx::load()?;
    let formats: BTreeMap<String, String> = conf
        .directives
        .iter()
        .filter(|(_, name, _)| name == "log_format")
        .map(|(_, _, args)| (args[0].clone(), args[1..].join("")))
        .collect();
    for (name, format) in &formats {
        for variable in format.split('$').skip(1) {
            let variable: String = variable
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            ensure!(
                !matches!(
                    variable.as_str(),
                    "request" | "request_uri" | "args" | "query_string" | "is_args"
                ) && !variable.starts_with("arg_"),
                "log_format {name} records ${variable}, which holds the query string"
            );
        }
    }
    let logs: Vec<&Vec<String>> = conf
        .directives
        .iter()
        .filter(|(_, name, _)| name == "access_log")
        .map(|(_, _, args)| args)
        .collect();
    ensure!(
        !logs.is_empty(),
        "no access_log: nginx would use its default format"
    );
    for args in logs {
        if args[0] == "off" {
            continue;
        }
        let format = args.get(1).ok_or_else(|| {
            anyhow!(
                "access_log {} uses the default format, which logs $request",
                args[0]
            )
        })?;
        ensure!(
            formats.contains_key(format),
            "access_log {} uses format {format}, not one defined here",
            args[0]
        );
    }
    Ok(())
}
