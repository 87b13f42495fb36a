//! The ops pack of docker/compose.yaml's `monitoring` profile, against real processes:
//! the Grafana dashboard (docker/grafana/dashboards/herald.json) and the alert rules
//! (docker/prometheus-rules.yml) may query only metrics that a real Herald node
//! exports, each the way its type allows (`rate` over counters, never over gauges).
//!
//! - The node runs a NATS bridge and a Kafka bridge against a private nats-server and
//!   a private tansu, and takes its JWT keys from a JWKS server, so that the
//!   per-bridge families (`herald_bridge_*`, Kafka lag included) and the
//!   `herald_jwks_*` ones are in its `/metrics`.
//! - The dashboard and the rules are well-formed: every panel has a query, every
//!   query is scoped by the dashboard's `$job` and `$node` variables, every rule has
//!   a severity and a summary.
//! - promtool (Debian's `prometheus` package) accepts docker/prometheus.yml and the
//!   rules, and passes the rules' unit tests (tests/prometheus/rules.test.yml).
//! - Debian's Prometheus runs docker/prometheus.yml itself, with the DNS discovery of
//!   the compose services replaced by the node's address: every dashboard query
//!   answers with data, every rule evaluates without error, a healthy node raises no
//!   alert, and stopping nats-server raises `HeraldBridgeDisconnected`.
//!
//! What it cannot check is Grafana itself (no Grafana runs here) and the images'
//! Prometheus 3 (Debian's is 2.42): docs/deployment.md, "What is not verified here".
//! scripts/test installs the `prometheus` package; a missing one fails with the
//! command that installs it.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use herald_e2e::jwks::{JwksServer, SigningKey};
use herald_e2e::kafka::Tansu;
use herald_e2e::nats::NatsServer;
use herald_e2e::{config, read, repo_root, Broker};
use serde_json::{json, Value};

const DASHBOARD: &str = "docker/grafana/dashboards/herald.json";
const RULES: &str = "docker/prometheus-rules.yml";
const PROMETHEUS_CONFIG: &str = "docker/prometheus.yml";
const RULE_TESTS: &str = "tests/prometheus/rules.test.yml";

/// How to get promtool and prometheus, for the failure message.
const INSTALL: &str = "is not installed. tests/ops.rs checks the monitoring files with \
    Debian's Prometheus: `sudo apt-get install -y --no-install-recommends prometheus` \
    (scripts/test does this)";

// ---------------------------------------------------------------------------------
// What the pack queries

/// One PromQL expression of the pack, and where it is.
#[derive(Debug, Clone)]
struct Query {
    origin: String,
    expr: String,
}

fn dashboard() -> Result<Value> {
    serde_json::from_str(&read(DASHBOARD)?).with_context(|| format!("{DASHBOARD} is not JSON"))
}

fn rules() -> Result<Value> {
    yaml_serde::from_str(&read(RULES)?).with_context(|| format!("{RULES} is not YAML"))
}

/// Every panel of the dashboard, those inside rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The dashboard's PromQL: every target of every panel.
fn panel_queries(dashboard: &Value) -> Vec<Query> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(Query {
                origin: format!(
                    "panel `{}`, target {}",
                    panel["title"].as_str().unwrap_or("?"),
                    target["refId"].as_str().unwrap_or("?")
                ),
                expr: target["expr"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
    queries
}

/// The dashboard's query variables: (name, query), e.g.
/// `label_values(herald_connections{job="$job"}, instance)`.
fn variable_queries(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let query = match &v["query"] {
                Value::String(q) => q.clone(),
                other => other["query"].as_str().unwrap_or_default().to_owned(),
            };
            (v["name"].as_str().unwrap_or("?").to_owned(), query)
        })
        .collect()
}

/// Every alerting (and recording) rule, as its name and expression.
fn rule_queries(rules: &Value) -> Vec<Query> {
    let mut queries = Vec::new();
    for group in rules["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            let name = rule["alert"].as_str().or(rule["record"].as_str());
            queries.push(Query {
                origin: format!("rule {}", name.unwrap_or("?")),
                expr: rule["expr"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
    queries
}

/// Every query of the pack: panels, variables, rules.
fn all_queries() -> Result<Vec<Query>> {
    let dashboard = dashboard()?;
    let mut queries = panel_queries(&dashboard);
    queries.extend(
        variable_queries(&dashboard)
            .into_iter()
            .map(|(name, expr)| Query {
                origin: format!("variable ${name}"),
                expr,
            }),
    );
    queries.extend(rule_queries(&rules()?));
    Ok(queries)
}

// ---------------------------------------------------------------------------------
// Reading PromQL

/// A metric named in an expression, and the function it is the argument of
/// (`rate` in `rate(herald_x{…}[5m])`), if any.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Use {
    name: String,
    function: Option<String>,
}

/// The Herald metrics (`herald_…`) an expression names. String literals (label
/// values such as `reason!="queue_full"`, or a template's query) and comments are
/// skipped, so a `herald_` inside quotes is no metric; label names, durations,
/// Grafana variables (`$node`) and keywords are not `herald_…` identifiers.
fn metric_uses(expr: &str) -> Vec<Use> {
    let chars: Vec<char> = expr.chars().collect();
    let mut uses = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.starts_with("herald_") && !c.is_ascii_digit() {
                uses.push(Use {
                    name: word,
                    function: enclosing_function(&chars[..start]),
                });
            }
        } else {
            i += 1;
        }
    }
    uses
}

/// The function whose call `before` ends in: `rate` for `… rate( `, `None` for
/// `sum by (instance) (`.
fn enclosing_function(before: &[char]) -> Option<String> {
    let mut end = before.len();
    while end > 0 && before[end - 1].is_whitespace() {
        end -= 1;
    }
    if end == 0 || before[end - 1] != '(' {
        return None;
    }
    end -= 1;
    while end > 0 && before[end - 1].is_whitespace() {
        end -= 1;
    }
    let mut start = end;
    while start > 0 && (before[start - 1].is_ascii_alphanumeric() || before[start - 1] == '_') {
        start -= 1;
    }
    (start < end).then(|| before[start..end].iter().collect())
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    metric_uses(expr).into_iter().map(|u| u.name).collect()
}

/// The metric families of a Prometheus text exposition (`# TYPE name type`), and the
/// names its samples carry.
struct Exposition {
    families: BTreeMap<String, String>,
    samples: BTreeSet<String>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut families = BTreeMap::new();
        let mut samples = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    families.insert(name.to_owned(), kind.to_owned());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let name: String = line
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                samples.insert(name);
            }
        }
        Exposition { families, samples }
    }

    /// The family a queried name belongs to, and its type: the name itself, or a
    /// histogram's `_bucket`, `_sum` and `_count` series (a summary's `_sum` and
    /// `_count`). `None` when the node exports no such family, or exports the
    /// name only as samples without a `# TYPE`.
    fn family_of(&self, name: &str) -> Option<(&str, &str)> {
        if let Some((family, kind)) = self.families.get_key_value(name) {
            return self
                .samples
                .contains(name)
                .then_some((family.as_str(), kind.as_str()));
        }
        for (suffix, kinds) in [
            ("_bucket", &["histogram"][..]),
            ("_sum", &["histogram", "summary"]),
            ("_count", &["histogram", "summary"]),
        ] {
            let Some(base) = name.strip_suffix(suffix) else {
                continue;
            };
            if let Some((family, kind)) = self.families.get_key_value(base) {
                if kinds.contains(&kind.as_str()) && self.samples.contains(name) {
                    return Some((family.as_str(), kind.as_str()));
                }
            }
        }
        None
    }
}

/// Every way the pack misuses the exposition: a name it does not export, a counter
/// read without `rate`/`increase`, a gauge read with them. Empty when all is well.
fn misuses(queries: &[Query], exposition: &Exposition) -> Vec<String> {
    let mut problems = Vec::new();
    for query in queries {
        for found in metric_uses(&query.expr) {
            let name = &found.name;
            let function = found.function.as_deref();
            let by_counter = matches!(function, Some("rate" | "irate" | "increase"));
            match exposition.family_of(name) {
                None => problems.push(format!(
                    "{}: `{name}` is not in a real node's /metrics",
                    query.origin
                )),
                Some((_, "counter")) if !by_counter => problems.push(format!(
                    "{}: counter `{name}` is read without rate() or increase() \
                     (read by {function:?})",
                    query.origin
                )),
                Some((_, "gauge")) if by_counter => problems.push(format!(
                    "{}: gauge `{name}` is read with {function:?}, which is for counters",
                    query.origin
                )),
                Some(_) => {}
            }
        }
    }
    problems
}

#[test]
fn metric_names_are_read_from_promql_as_prometheus_would() {
    let expr = r#"sum by (instance, reason) (rate(herald_events_dropped_total{job="$job", reason!="herald_not_a_metric", instance=~"$node"}[$__rate_interval])) > 0
        # herald_in_a_comment
        or histogram_quantile(0.99, sum by (le) (rate(herald_latency_seconds_bucket[5m])))
        / max_over_time(count(herald_connections)[1h:1m]) and on (instance) 5m_not_herald_x"#;
    assert_eq!(
        metric_names(expr),
        BTreeSet::from([
            "herald_events_dropped_total".to_owned(),
            "herald_latency_seconds_bucket".to_owned(),
            "herald_connections".to_owned(),
        ])
    );
    let uses = metric_uses(expr);
    assert_eq!(uses[0].function.as_deref(), Some("rate"));
    assert_eq!(uses[2].function.as_deref(), Some("count"));
    assert_eq!(
        metric_uses("sum by (instance) ( herald_topics )")[0].function,
        None
    );

    let exposition = Exposition::parse(
        "# HELP herald_latency_seconds x\n# TYPE herald_latency_seconds histogram\n\
         herald_latency_seconds_bucket{le=\"+Inf\"} 1\nherald_latency_seconds_sum 1\n\
         herald_latency_seconds_count 1\n# TYPE herald_connections gauge\n\
         herald_connections 3\n# TYPE herald_events_dropped_total counter\n\
         herald_events_dropped_total{reason=\"queue_full\"} 0\nherald_untyped 1\n",
    );
    let query = |expr: &str| {
        vec![Query {
            origin: "test".into(),
            expr: expr.into(),
        }]
    };
    assert!(misuses(&query(expr), &exposition).is_empty());
    // A name the node does not export, one it exports without # TYPE, a suffix
    // that is not the histogram's, and misused types.
    for bad in [
        "herald_bogus_total",
        "herald_untyped",
        "herald_connections_count",
        "herald_latency_seconds_total",
        "herald_events_dropped_total",
        "rate(herald_connections[5m])",
    ] {
        assert_eq!(misuses(&query(bad), &exposition).len(), 1, "{bad}");
    }
}

// ---------------------------------------------------------------------------------
// A real node with a NATS and a Kafka bridge

struct Node {
    broker: Broker,
    nats: NatsServer,
    _kafka: Tansu,
    _jwks: JwksServer,
}

impl Node {
    async fn start() -> Result<Node> {
        let nats = NatsServer::start()?;
        let kafka = Tansu::start()?;
        kafka.create_topic("orders", 2).await?;
        // Keys from a JWKS, so that the `herald_jwks_*` families are exported too.
        let jwks = JwksServer::start(&[&SigningKey::ed25519("ops")?]).await?;
        let broker = Broker::start(&config(
            "",
            &format!(
                "[[bridge.nats]]\nname = \"events\"\nurl = \"{}\"\nsubjects = [\"metrics.>\"]\n\n\
                 [[bridge.kafka]]\nname = \"orders\"\nbrokers = \"{}\"\ntopics = [\"orders\"]\n\
                 metadata_refresh_ms = 500\n\n\
                 [auth]\nmode = \"jwt\"\njwks_url = \"{}\"\n",
                nats.url(),
                kafka.brokers(),
                jwks.url()
            ),
        ))?;
        broker.wait_readyz(200).await?;
        Ok(Node {
            broker,
            nats,
            _kafka: kafka,
            _jwks: jwks,
        })
    }

    async fn metrics(&self) -> Result<String> {
        let (status, body) = self.broker.get("/metrics").await?;
        ensure!(status == 200, "/metrics answered {status}");
        body.as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("/metrics is not text: {body}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_rules_query_only_metrics_a_real_node_exports() -> Result<()> {
    let queries = all_queries()?;
    let node = Node::start().await?;
    let text = node.metrics().await?;
    let exposition = Exposition::parse(&text);
    for bridge in ["events", "orders"] {
        ensure!(
            text.contains(&format!("herald_bridge_lag{{bridge=\"{bridge}\"}}")),
            "the node exports no metrics of bridge {bridge}:\n{text}"
        );
    }

    let problems = misuses(&queries, &exposition);
    ensure!(
        problems.is_empty(),
        "the ops pack queries what a real node does not export as queried:\n  {}\n\
         The node's /metrics:\n{text}",
        problems.join("\n  ")
    );

    // The pack covers Herald: every family the node exports is on the dashboard, so
    // a new metric gets a panel (or a deliberate line here).
    let on_dashboard: BTreeSet<String> = panel_queries(&dashboard()?)
        .iter()
        .flat_map(|q| metric_names(&q.expr))
        .collect();
    let not_shown: Vec<&String> = exposition
        .families
        .keys()
        .filter(|f| !on_dashboard.contains(*f))
        .collect();
    ensure!(
        not_shown.is_empty(),
        "{DASHBOARD} shows no panel for {not_shown:?}; add one (tests/ops.rs checks it \
         against a real node)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// The files themselves

#[test]
fn every_dashboard_panel_queries_prometheus_for_the_selected_nodes() -> Result<()> {
    let dashboard = dashboard()?;
    ensure!(
        dashboard["uid"] == "herald",
        "the dashboard's uid is its URL"
    );
    ensure!(
        dashboard["title"].as_str().is_some_and(|t| !t.is_empty()),
        "no title"
    );

    // The variables every query uses: the data source, the scrape job, the nodes.
    let variables: BTreeMap<&str, &Value> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["name"].as_str()?, v)))
        .collect();
    let names: Vec<&&str> = variables.keys().collect();
    ensure!(
        names == [&"datasource", &"job", &"node"],
        "variables: {names:?}"
    );
    ensure!(
        variables["datasource"]["type"] == "datasource"
            && variables["datasource"]["query"] == "prometheus",
        "$datasource picks a Prometheus data source"
    );
    let node = variables["node"];
    ensure!(
        node["includeAll"] == true && node["allValue"] == ".+" && node["multi"] == true,
        "$node: any selection, and `All` as a regex matching every instance: {node}"
    );
    for (name, query) in variable_queries(&dashboard) {
        ensure!(
            query.starts_with("label_values(") && !metric_names(&query).is_empty(),
            "variable ${name} should list label values of a Herald metric: {query}"
        );
    }

    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        ensure!(!title.is_empty(), "a panel without a title: {panel}");
        let id = panel["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("{title}: no id"))?;
        ensure!(ids.insert(id), "panel id {id} is used twice");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
        ensure!(
            x.zip(w).is_some_and(|(x, w)| w > 0 && x + w <= 24)
                && grid["h"].as_u64().is_some_and(|h| h > 0)
                && grid["y"].is_u64(),
            "{title}: gridPos {grid} is not within the 24 columns"
        );
        if panel["type"] == "row" {
            ensure!(
                panel.get("targets").is_none(),
                "{title}: a row has no queries"
            );
            continue;
        }
        ensure!(
            panel["datasource"]["uid"] == "${datasource}",
            "{title}: its data source should be $datasource: {}",
            panel["datasource"]
        );
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        ensure!(!targets.is_empty(), "panel `{title}` has no query");
        let mut refs = BTreeSet::new();
        for target in &targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            ensure!(
                !expr.trim().is_empty(),
                "panel `{title}` has a target without expr"
            );
            ensure!(
                refs.insert(target["refId"].as_str().unwrap_or_default()),
                "panel `{title}`: refIds must differ"
            );
            // Every selector is scoped to the chosen job and nodes.
            for selector in selectors(expr) {
                ensure!(
                    selector.contains("job=\"$job\"") && selector.contains("instance=~\"$node\""),
                    "panel `{title}`: `{selector}` is not scoped by job=\"$job\" and \
                     instance=~\"$node\""
                );
            }
            ensure!(
                !selectors(expr).is_empty(),
                "panel `{title}` selects nothing: {expr}"
            );
            queries += 1;
        }
    }
    ensure!(queries >= 20, "only {queries} queries on the dashboard");
    Ok(())
}

/// The series selectors of an expression (`herald_x{…}`, `up{…}`), as text.
fn selectors(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for name in metric_names(expr).into_iter().chain(["up".to_owned()]) {
        let mut rest = expr;
        while let Some(at) = rest.find(&name) {
            let before = rest[..at].chars().next_back();
            let after = &rest[at + name.len()..];
            rest = after;
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                || after
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '(')
            {
                continue;
            }
            let matchers = after
                .strip_prefix('{')
                .and_then(|m| m.split_once('}'))
                .map_or("", |(m, _)| m);
            out.push(format!("{name}{{{matchers}}}"));
        }
    }
    out
}

#[test]
fn the_alert_rules_are_well_formed() -> Result<()> {
    let rules = rules()?;
    let groups = rules["groups"]
        .as_array()
        .filter(|g| !g.is_empty())
        .ok_or_else(|| anyhow!("{RULES}: no groups"))?;
    let mut alerts = BTreeSet::new();
    for group in groups {
        let name = group["name"].as_str().unwrap_or_default();
        ensure!(!name.is_empty(), "a group without a name");
        let list = group["rules"]
            .as_array()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| anyhow!("group {name}: no rules"))?;
        for rule in list {
            let alert = rule["alert"]
                .as_str()
                .ok_or_else(|| anyhow!("group {name}: a rule that is no alert: {rule}"))?;
            ensure!(alerts.insert(alert.to_owned()), "{alert} is defined twice");
            let expr = rule["expr"].as_str().unwrap_or_default();
            ensure!(
                !metric_names(expr).is_empty() || expr.contains("up{"),
                "{alert}: {expr}"
            );
            // The scrape job of docker/prometheus.yml, and no other.
            for selector in selectors(expr) {
                ensure!(
                    selector.contains("job=\"herald\""),
                    "{alert}: `{selector}` is not scoped to job=\"herald\""
                );
            }
            ensure!(
                matches!(
                    rule["labels"]["severity"].as_str(),
                    Some("critical" | "warning")
                ),
                "{alert}: severity critical or warning"
            );
            for key in ["summary", "description"] {
                ensure!(
                    rule["annotations"][key]
                        .as_str()
                        .is_some_and(|s| !s.trim().is_empty()),
                    "{alert}: no {key}"
                );
            }
            if let Some(duration) = rule.get("for") {
                ensure!(
                    duration.as_str().is_some_and(|d| d.ends_with('m')),
                    "{alert}: `for` in minutes: {duration}"
                );
            }
        }
    }
    for expected in [
        "HeraldDown",
        "HeraldNodeMissing",
        "HeraldBridgeDisconnected",
        "HeraldEventsDropped",
        "HeraldSlowClients",
        "HeraldKafkaLag",
    ] {
        ensure!(alerts.contains(expected), "no alert {expected}: {alerts:?}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// promtool and Prometheus

/// Runs a program of the `prometheus` package; fails with the install command when
/// it is missing.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .current_dir(repo_root())
        .args(args)
        .output();
    let out = match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{program} {INSTALL}"),
        other => other.with_context(|| format!("run {program}"))?,
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "{program} {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    Ok(text)
}

#[test]
fn promtool_accepts_the_config_and_the_rules_and_passes_their_unit_tests() -> Result<()> {
    // check config also checks the rule files it names, relative to itself.
    let out = run("promtool", &["check", "config", PROMETHEUS_CONFIG])?;
    ensure!(
        out.contains(RULES),
        "promtool did not check {RULES}:\n{out}"
    );
    run("promtool", &["check", "rules", RULES])?;
    let out = run("promtool", &["test", "rules", RULE_TESTS])?;
    ensure!(out.contains("SUCCESS"), "{out}");
    // Every alert has a unit test.
    let tests = read(RULE_TESTS)?;
    for query in rule_queries(&rules()?) {
        let alert = query.origin.trim_start_matches("rule ");
        ensure!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{RULE_TESTS} does not test {alert}"
        );
    }
    Ok(())
}

/// Debian's Prometheus on a free port, with a configuration and its rule files in a
/// directory of its own. Killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts it with docker/prometheus.yml, its `herald` job pointed at `target`
    /// (`host:port`) instead of the compose services, scraping and evaluating every
    /// second.
    async fn start(target: &str) -> Result<Prometheus> {
        let dir = tempfile::tempdir()?;
        let mut config: Value = yaml_serde::from_str(&read(PROMETHEUS_CONFIG)?)?;
        config["global"]["scrape_interval"] = json!("1s");
        config["global"]["evaluation_interval"] = json!("1s");
        let jobs = config["scrape_configs"]
            .as_array_mut()
            .ok_or_else(|| anyhow!("no scrape_configs"))?;
        let job = jobs
            .iter_mut()
            .find(|j| j["job_name"] == "herald")
            .ok_or_else(|| anyhow!("no job herald"))?;
        let job = job.as_object_mut().ok_or_else(|| anyhow!("job herald"))?;
        ensure!(
            job.remove("dns_sd_configs").is_some(),
            "{PROMETHEUS_CONFIG}: the herald job has no dns_sd_configs to replace"
        );
        job.insert("static_configs".into(), json!([{"targets": [target]}]));
        // The rule files, beside the configuration as in the container.
        for file in config["rule_files"].as_array().into_iter().flatten() {
            let file = file.as_str().ok_or_else(|| anyhow!("rule file {file}"))?;
            std::fs::copy(repo_root().join("docker").join(file), dir.path().join(file))?;
        }
        // JSON is YAML.
        let path = dir.path().join("prometheus.yml");
        std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;

        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn();
        let child = match child {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("prometheus {INSTALL}"),
            other => other.context("start prometheus")?,
        };
        let mut prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = prometheus.child.try_wait()? {
                bail!("prometheus exited ({status}):\n{}", prometheus.log());
            }
            let ready = reqwest::get(format!("{}/-/ready", prometheus.url)).await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(prometheus);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "prometheus was not ready within 30 s:\n{}",
                    prometheus.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/PATH` with a query string; the `data` of a successful answer.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value> {
        let body: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/{path}", self.url))
            .query(params)
            .send()
            .await?
            .json()
            .await?;
        ensure!(body["status"] == "success", "{path} {params:?}: {body}");
        Ok(body["data"].clone())
    }

    /// An instant query's result vector.
    async fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let data = self.api("query", &[("query", expr)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Polls `check` every 200 ms until it answers `Some`, for up to `timeout`.
    async fn wait_for<T, F, Fut>(&self, timeout: Duration, what: &str, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = check().await? {
                return Ok(found);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{what} within {timeout:?}; prometheus logged:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A dashboard query as Grafana sends it with every node selected.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$job", "herald")
        .replace("$node", ".+")
}

/// The names of the active alerts (pending or firing), with their state.
async fn active_alerts(prometheus: &Prometheus) -> Result<Vec<(String, String, Value)>> {
    let data = prometheus.api("alerts", &[]).await?;
    Ok(data["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap_or("?").to_owned(),
                a["state"].as_str().unwrap_or("?").to_owned(),
                a["labels"].clone(),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_runs_the_stack_config_against_a_real_node() -> Result<()> {
    let mut node = Node::start().await?;
    let prometheus = Prometheus::start(&node.broker.addr).await?;
    let p = &prometheus;

    // A few scrapes, so that rate() has samples to work with.
    prometheus
        .wait_for(
            Duration::from_secs(30),
            "three scrapes of the node",
            || async move {
                let got = p
                    .query("count_over_time(up{job=\"herald\"}[1m]) >= 3")
                    .await?;
                Ok((!got.is_empty()).then_some(()))
            },
        )
        .await?;
    let up = prometheus.query("up{job=\"herald\"} == 1").await?;
    ensure!(up.len() == 1, "the node is not up in Prometheus: {up:?}");

    // Every dashboard query answers with data, as Grafana would send it.
    let dashboard = dashboard()?;
    let mut empty = Vec::new();
    for query in panel_queries(&dashboard) {
        let expr = as_grafana_sends(&query.expr);
        let result = prometheus
            .query(&expr)
            .await
            .with_context(|| format!("{}: {expr}", query.origin))?;
        if result.is_empty() {
            empty.push(format!("{}: {expr}", query.origin));
        }
    }
    ensure!(
        empty.is_empty(),
        "dashboard queries without data from a real node:\n  {}",
        empty.join("\n  ")
    );
    // The variables list the job and the node.
    for (name, query) in variable_queries(&dashboard) {
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .ok_or_else(|| anyhow!("variable ${name}: {query}"))?;
        let (selector, label) = (as_grafana_sends(inner.0), inner.1.trim());
        let result = prometheus.query(&selector).await?;
        ensure!(
            result.iter().any(|s| s["metric"][label].is_string()),
            "variable ${name}: {selector} has no label {label}: {result:?}"
        );
    }

    // Every rule loaded and evaluates without error.
    let expected: BTreeSet<String> = rule_queries(&rules()?)
        .into_iter()
        .map(|q| q.origin.trim_start_matches("rule ").to_owned())
        .collect();
    let expected = &expected;
    let evaluated = prometheus
        .wait_for(
            Duration::from_secs(15),
            "every rule evaluated",
            || async move {
                let data = p.api("rules", &[]).await?;
                let rules: Vec<Value> = data["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                    .collect();
                let done =
                    rules.len() == expected.len() && rules.iter().all(|r| r["health"] != "unknown");
                Ok(done.then_some(rules))
            },
        )
        .await?;
    let names: BTreeSet<String> = evaluated
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    ensure!(
        &names == expected,
        "loaded {names:?}, expected {expected:?}"
    );
    for rule in &evaluated {
        ensure!(
            rule["health"] == "ok",
            "rule {} does not evaluate: {}",
            rule["name"],
            rule["lastError"]
        );
    }

    // A healthy node raises nothing (before the first scrape, `absent(up)` may have
    // been pending for a moment).
    prometheus
        .wait_for(
            Duration::from_secs(15),
            "no alert on a healthy node",
            || async move { Ok(active_alerts(p).await?.is_empty().then_some(())) },
        )
        .await?;

    // nats-server stops: the NATS bridge's alert goes pending (its `for` is a
    // minute), for that bridge on that node.
    node.nats.stop();
    let alert = prometheus
        .wait_for(
            Duration::from_secs(20),
            "HeraldBridgeDisconnected after nats-server stopped",
            || async move {
                Ok(active_alerts(p)
                    .await?
                    .into_iter()
                    .find(|(name, _, _)| name == "HeraldBridgeDisconnected"))
            },
        )
        .await?;
    let (_, state, labels) = alert;
    ensure!(state == "pending", "{state}: the alert waits its `for`");
    ensure!(
        labels["bridge"] == "events"
            && labels["instance"] == node.broker.addr.as_str()
            && labels["severity"] == "critical",
        "{labels}"
    );
    let others: Vec<String> = active_alerts(&prometheus)
        .await?
        .into_iter()
        .map(|(name, _, _)| name)
        .filter(|name| name != "HeraldBridgeDisconnected")
        .collect();
    ensure!(others.is_empty(), "other alerts: {others:?}");
    Ok(())
}
