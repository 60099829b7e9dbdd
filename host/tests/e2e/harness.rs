//! Starts the real `rentcar-host` binary on an ephemeral port with a
//! temporary data directory, and speaks HTTP to it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::broker;

/// The admin token every test host is started with.
pub const TOKEN: &str = "test-admin-token";

/// The secret of the nodes, when the tests run hosts on two.
pub const CLUSTER_SECRET: &str = "the end-to-end tests' cluster secret";

/// The HS256 secret every test host checks tokens with.
pub const JWT_SECRET: &str = "the end-to-end tests' HS256 secret, not a real one";

/// A token for `sub` with `roles`, as any JWT library makes one, valid for
/// an hour.
pub fn token(sub: &str, roles: &[&str]) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({
        "iss": "rentcar", "aud": "rentcar-api", "sub": sub, "roles": roles,
        "iat": now, "exp": now + 3600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()).expect("an HMAC key"),
    )
    .expect("a token")
}

/// A client whose requests carry a token for `sub` with `roles`.
#[allow(dead_code, reason = "used by the end-to-end tests only")]
pub fn client_as(sub: &str, roles: &[&str]) -> reqwest::Client {
    builder_as(sub, roles).build().expect("a client")
}

fn builder_as(sub: &str, roles: &[&str]) -> reqwest::ClientBuilder {
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {}", token(sub, roles));
    headers.insert(reqwest::header::AUTHORIZATION, bearer.parse().expect("a header value"));
    reqwest::Client::builder()
        .default_headers(headers)
        // Below the host's `idle_timeout_ms` (5 s): a connection the host
        // closed for idling is never reused.
        .pool_idle_timeout(Duration::from_secs(2))
}

/// [`client`]'s builder, for other settings.
pub fn client_builder() -> reqwest::ClientBuilder {
    builder_as("kim", &["customer", "admin"])
}

/// The tests' usual client: `kim`, a customer who is an admin too, so
/// that one client registers cars, orders and reads everything.
pub fn client() -> reqwest::Client {
    client_builder().build().expect("a client")
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host is in the workspace")
        .to_path_buf()
}

/// The repository's own `runtime.toml`, whose component paths point at the
/// release builds of `cargo xtask build`.
pub fn runtime_toml() -> PathBuf {
    root().join("runtime.toml")
}

/// Writes `runtime.toml` into `dir` with its component paths made absolute
/// and `extra` appended (more tables, or limits of its components).
#[allow(dead_code, reason = "used by the end-to-end tests and the polyglot bench")]
pub fn runtime_toml_with(dir: &Path, extra: &str) -> anyhow::Result<PathBuf> {
    let config = std::fs::read_to_string(runtime_toml())?
        .replace("path = \"target/", &format!("path = \"{}/target/", root().display()))
        + "\n"
        + extra;
    let path = dir.join("runtime.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// The repository's components placed on two nodes on free ports (`on_a`
/// on node a, `on_b` on node b), their events on the Kafka at `brokers`
/// under a prefix of `dir`'s own; `extra` is appended.
#[allow(dead_code, reason = "used by the end-to-end tests and the nodes bench")]
pub fn two_nodes_config(
    dir: &Path,
    on_a: &[&str],
    on_b: &[&str],
    brokers: &str,
    extra: &str,
) -> anyhow::Result<PathBuf> {
    let list = |names: &[&str]| names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ");
    let prefix = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("nodes")
        .replace('.', "");
    let nodes = format!(
        "[bus]\nkind = \"kafka\"\nbrokers = {brokers:?}\ntopic_prefix = \"{prefix}.\"\n\n\
         [cluster]\nsecret = {CLUSTER_SECRET:?}\n\n\
         [nodes.a]\nurl = \"http://127.0.0.1:{a}\"\ncomponents = [{on_a}]\n\n\
         [nodes.b]\nurl = \"http://127.0.0.1:{b}\"\ncomponents = [{on_b}]\n\n{extra}",
        a = broker::free_port()?,
        b = broker::free_port()?,
        on_a = list(on_a),
        on_b = list(on_b),
    );
    runtime_toml_with(dir, &nodes)
}

/// The release build of a component.
pub fn wasm(name: &str) -> PathBuf {
    root().join(format!("target/wasm32-wasip2/release/{name}.wasm"))
}

/// Writes a config that runs only the probe component, subscribed to the
/// `probe` topic, with `delivery` as its `[delivery]` table.
pub fn probe_config(dir: &Path, delivery: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("probe.toml");
    let config = format!(
        "[components.probe]\npath = {:?}\nroutes = [\"/probe\"]\nsubscribe = [\"probe\"]\n\n[delivery]\n{delivery}\n",
        wasm("probe")
    );
    std::fs::write(&path, config)?;
    Ok(path)
}

/// Writes a component database as a version of it at its second migration
/// left it: `schema` and rows, its migrations table at 2.
pub fn database_at_migration_2(dir: &std::path::Path, component: &str, schema: &str) -> anyhow::Result<()> {
    let old = rusqlite::Connection::open(dir.join(format!("{component}.db")))?;
    old.execute_batch(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY);
         INSERT INTO schema_migrations (version) VALUES (1), (2);",
    )?;
    old.execute_batch(schema)?;
    Ok(())
}

/// Compiled components, shared by every host the tests start: loyalty
/// (Python, 18 MB of wasm) takes tens of seconds to compile, which no test
/// should pay again.
fn cache_dir() -> PathBuf {
    root().join("target/wasmtime-cache")
}

/// Compiles the components of `runtime.toml` into the cache once per test
/// process, before the first host starts, so that hosts started at once
/// do not each compile them.
fn warm_cache() -> anyhow::Result<()> {
    static WARM: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    WARM.get_or_init(|| {
        let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
        let host = Host::launch(&runtime_toml(), dir.path(), &[], Some(JWT_SECRET));
        host.map(drop).map_err(|err| format!("{err:#}"))
    })
    .clone()
    .map_err(|err| anyhow::anyhow!("cannot warm the compile cache: {err}"))
}

pub struct Host {
    child: Child,
    pub base: String,
    log: Arc<Mutex<Vec<String>>>,
    client: reqwest::Client,
    /// On two nodes (`RENTCAR_TEST_NODES=2`): node b, which runs rentcar
    /// and view; this process is node a, which runs the rest.
    partner: Option<Box<Host>>,
}

impl Host {
    pub fn start(data_dir: &Path) -> anyhow::Result<Host> {
        Host::start_with(&runtime_toml(), data_dir)
    }

    pub fn start_with(config: &Path, data_dir: &Path) -> anyhow::Result<Host> {
        Host::start_with_args(config, data_dir, &[])
    }

    /// Spawns the host and waits for its readiness line.
    pub fn start_with_args(config: &Path, data_dir: &Path, extra: &[&str]) -> anyhow::Result<Host> {
        Host::spawn(config, data_dir, extra, Some(JWT_SECRET))
    }

    /// A host that is given no HS256 secret: it makes its own in the data
    /// directory, as on a fresh machine.
    #[allow(dead_code, reason = "used by the end-to-end tests only")]
    pub fn start_with_own_secret(config: &Path, data_dir: &Path) -> anyhow::Result<Host> {
        Host::spawn(config, data_dir, &[], None)
    }

    fn spawn(config: &Path, data_dir: &Path, extra: &[&str], jwt_secret: Option<&str>) -> anyhow::Result<Host> {
        warm_cache()?;
        Host::launch(config, data_dir, extra, jwt_secret)
    }

    fn launch(config: &Path, data_dir: &Path, extra: &[&str], jwt_secret: Option<&str>) -> anyhow::Result<Host> {
        for component in [
            "order",
            "payment",
            "rentcar",
            "view",
            "loyalty",
            "hello_js",
            "probe",
            "hostile",
            "broken_payment",
            "changed_payment",
        ] {
            let wasm = wasm(component);
            if !wasm.exists() {
                bail!(
                    "{} is missing: run the tests with `cargo xtask test`, which builds the components",
                    wasm.display()
                );
            }
        }
        let on_kafka;
        let config = if broker::on_kafka() {
            on_kafka = broker::on_broker(config, data_dir, &broker::shared()?)?;
            &on_kafka
        } else {
            config
        };
        // A host told where to listen, or on a secret of its own (nodes
        // check tokens with one key), stays one process.
        let placed = extra.iter().any(|arg| ["--listen", "--node"].contains(arg));
        if !placed
            && jwt_secret.is_some()
            && let Some(nodes) = split(config, data_dir)?
        {
            let partner = Host::launch_one(&nodes, &partner_dir(data_dir), &["--node", "b"], jwt_secret)?;
            let args = [&["--node", "a"], extra].concat();
            let mut host = Host::launch_one(&nodes, data_dir, &args, jwt_secret)?;
            host.partner = Some(Box::new(partner));
            return Ok(host);
        }
        Host::launch_one(config, data_dir, extra, jwt_secret)
    }

    fn launch_one(config: &Path, data_dir: &Path, extra: &[&str], jwt_secret: Option<&str>) -> anyhow::Result<Host> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rentcar-host"));
        match jwt_secret {
            Some(secret) => command.env("RENTCAR_JWT_SECRET", secret),
            None => command.env_remove("RENTCAR_JWT_SECRET"),
        };
        command.arg("serve");
        // A node listens where the config places it, unless told otherwise.
        if !extra.iter().any(|arg| ["--listen", "--node"].contains(arg)) {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("RENTCAR_ADMIN_TOKEN", TOKEN)
            .env("RENTCAR_CACHE_DIR", cache_dir())
            // Benchmarks turn logging down (debug logs cost throughput).
            .env(
                "RUST_LOG",
                std::env::var("RENTCAR_HOST_LOG").unwrap_or_else(|_| "info,rentcar_host=debug".into()),
            )
            .env("RUST_BACKTRACE", "0")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("failed to spawn rentcar-host")?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready, address) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = ready.send(addr.to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let started = Instant::now();
        let base = loop {
            match address.recv_timeout(Duration::from_millis(100)) {
                Ok(base) => break base,
                Err(_) if started.elapsed() > Duration::from_secs(120) => {
                    bail!("host did not become ready in 120 s")
                }
                Err(_) => {
                    if let Some(status) = child.try_wait()? {
                        std::thread::sleep(Duration::from_millis(200));
                        bail!(
                            "host exited with {status} before ready:\n{}",
                            log.lock().unwrap().join("\n")
                        );
                    }
                }
            }
        };
        Ok(Host {
            child,
            base,
            log,
            client: client(),
            partner: None,
        })
    }

    #[allow(dead_code, reason = "used by the benchmarks")]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the host process, in KiB (Linux).
    #[allow(dead_code, reason = "used by the benchmarks")]
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// The host process's proportional share of physical memory, in KiB
    /// (Linux): unlike RSS, a page that several pool slots map (a memory
    /// image's) is counted once.
    #[allow(dead_code, reason = "used by the end-to-end tests only")]
    pub fn pss_kib(&self) -> Option<u64> {
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", self.child.id())).ok()?;
        let line = rollup.lines().find(|line| line.starts_with("Pss:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// What the host logged (both nodes', on two).
    pub fn log(&self) -> String {
        match &self.partner {
            Some(partner) => format!("{}\n---- node b ----\n{}", self.own_log(), partner.log()),
            None => self.own_log(),
        }
    }

    fn own_log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until the host has logged `text`: its log is read on a
    /// thread of its own, so a line written before an answer may be read
    /// after it.
    pub async fn logged(&self, text: &str) -> anyhow::Result<()> {
        eventually(&format!("the log to say {text:?}"), Duration::from_secs(5), || async {
            Ok(self.log().contains(text).then_some(()))
        })
        .await
    }

    /// Ends the host like `kill -9` would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(partner) = &mut self.partner {
            partner.kill();
        }
    }

    /// Sends SIGTERM and waits for the host to exit by itself.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                if let Some(partner) = &mut self.partner {
                    partner.terminate()?;
                }
                return Ok(status);
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("host did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.send(self.client.get(format!("{}{path}", self.base))).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        self.send(self.client.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> anyhow::Result<(u16, Value)> {
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        self.send(request.body(body)).await
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str) -> anyhow::Result<(u16, Value)> {
        self.send(
            self.client
                .request(method, format!("{}{path}", self.base))
                .bearer_auth(TOKEN),
        )
        .await
    }

    /// Injects `fault` into calls and requests of `component`
    /// (`PUT /admin/faults/{component}`).
    pub async fn fault(&self, component: &str, fault: Value) -> anyhow::Result<(u16, Value)> {
        self.send(
            self.client
                .put(format!("{}/admin/faults/{component}", self.base))
                .bearer_auth(TOKEN)
                .json(&fault),
        )
        .await
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, body))
    }

    /// Every item of a paginated list (`{"items":[...],"next":id|null}`),
    /// following `next` page by page. `path` may carry a query already.
    pub async fn all(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        let mut next = Value::Null;
        loop {
            let page_path = match next.as_u64() {
                Some(after) => format!("{path}{separator}after={after}"),
                None => path.to_string(),
            };
            let (status, page) = self.get(&page_path).await?;
            anyhow::ensure!(status == 200, "GET {page_path} answered {status}: {page}");
            let page_items = page["items"]
                .as_array()
                .with_context(|| format!("GET {page_path} is not a page: {page}"))?;
            items.extend(page_items.iter().cloned());
            next = page["next"].clone();
            if next.is_null() {
                return Ok(items);
            }
        }
    }

    /// Registers a car and returns its id.
    pub async fn car(&self, name: &str, stock: u32) -> anyhow::Result<u64> {
        let (status, car) = self
            .post("/cars", serde_json::json!({ "name": name, "stock": stock }))
            .await?;
        anyhow::ensure!(status == 201, "car registration answered {status}: {car}");
        car["id"].as_u64().context("car id")
    }

    /// Places an order and returns the created order.
    pub async fn order(&self, car_id: u64, qty: u32) -> anyhow::Result<Value> {
        let (status, order) = self
            .post(
                "/orders",
                serde_json::json!({ "carId": car_id, "qty": qty, "customer": "kim" }),
            )
            .await?;
        anyhow::ensure!(status == 201, "order answered {status}: {order}");
        Ok(order)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
        // Captured by the test harness: shown only when the test fails.
        eprintln!("---- host log ----\n{}", self.own_log());
    }
}

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until GET `path` answers 200 with `field` equal to `expected`.
pub async fn wait_for(host: &Host, path: &str, field: &str, expected: Value) -> anyhow::Result<Value> {
    let what = format!("{path} to have {field} = {expected}");
    eventually(&what, Duration::from_secs(20), || async {
        let (status, body) = host.get(path).await?;
        Ok((status == 200 && body[field] == expected).then_some(body))
    })
    .await
}

/// Checks the books once events have settled. Returns `Ok(Some(summary))`
/// when everything agrees, `Ok(None)` while events are still in flight, and
/// an error for what can never happen, however late (an over-booked car).
///
/// Settled means: no order is still `PAID`; every order's payment matches
/// its status (RESERVED-APPROVED, REJECTED-REFUNDED, CANCELLED-CANCELLED);
/// every approved or cancelled payment has its order (a refunded one may
/// have none: abandoned by a crash); for every car
/// `stock = available + reserved by active orders`; the view equals rentcar.
/// Whether every customer has exactly 100 points per car of their reserved
/// orders (loyalty, built from order's events), where loyalty runs.
async fn loyalty_balances(host: &Host, orders: &[Value]) -> anyhow::Result<bool> {
    use std::collections::BTreeMap;
    let (status, _) = host.get("/loyalty").await?;
    if status == 404 {
        return Ok(true);
    }
    let mut expected: BTreeMap<&str, i64> = BTreeMap::new();
    for order in orders {
        let points = expected.entry(order["customer"].as_str().unwrap()).or_default();
        if order["status"] == "RESERVED" {
            *points += 100 * order["qty"].as_i64().unwrap();
        }
    }
    for (customer, points) in expected {
        let (status, account) = host.get(&format!("/loyalty/{customer}")).await?;
        if status != 200 || account["points"] != points {
            return Ok(false);
        }
    }
    Ok(true)
}

pub async fn books_balance(host: &Host) -> anyhow::Result<Option<String>> {
    use std::collections::HashMap;
    // A list that cannot be read right now (a context restarting) is not
    // settled yet.
    let (Ok(orders), Ok(payments), Ok(cars), Ok(view)) = (
        host.all("/orders?limit=1000").await,
        host.all("/payments?limit=1000").await,
        host.all("/cars?limit=1000").await,
        host.all("/availability?limit=1000").await,
    ) else {
        return Ok(None);
    };
    let (orders, payments, cars) = (&orders, &payments, &cars);
    for car in cars {
        anyhow::ensure!(car["available"].as_i64() >= Some(0), "car over-booked: {car}");
    }
    if orders.iter().any(|order| order["status"] == "PAID") {
        return Ok(None);
    }
    let orders_by_id: HashMap<u64, &Value> = orders.iter().map(|o| (o["id"].as_u64().unwrap(), o)).collect();
    let payments_by_id: HashMap<u64, &Value> = payments.iter().map(|p| (p["id"].as_u64().unwrap(), p)).collect();
    for order in orders {
        let Some(payment) = payments_by_id.get(&order["paymentId"].as_u64().unwrap()) else {
            anyhow::bail!("order without payment: {order}");
        };
        let expected = match order["status"].as_str().unwrap() {
            "RESERVED" => "APPROVED",
            "REJECTED" => "REFUNDED",
            _ => "CANCELLED",
        };
        if payment["status"] != expected {
            return Ok(None);
        }
    }
    for payment in payments {
        let order = orders_by_id.get(&payment["orderId"].as_u64().unwrap());
        let consistent = match (payment["status"].as_str().unwrap(), order) {
            ("APPROVED", Some(order)) => order["status"] == "RESERVED",
            ("CANCELLED", Some(order)) => order["status"] == "CANCELLED",
            ("REFUNDED", Some(order)) => order["status"] == "REJECTED",
            ("REFUNDED", None) => true,
            _ => false,
        };
        if !consistent {
            return Ok(None);
        }
    }
    let mut held: HashMap<u64, i64> = HashMap::new();
    for order in orders.iter().filter(|order| order["status"] == "RESERVED") {
        *held.entry(order["carId"].as_u64().unwrap()).or_default() += order["qty"].as_i64().unwrap();
    }
    for car in cars {
        let (stock, available) = (car["stock"].as_i64().unwrap(), car["available"].as_i64().unwrap());
        let reserved = held.get(&car["id"].as_u64().unwrap()).copied().unwrap_or(0);
        anyhow::ensure!(
            reserved <= stock,
            "more reserved than in stock: {car}, {reserved} reserved"
        );
        if stock != available + reserved {
            return Ok(None);
        }
    }
    let rentcar_as_view: Vec<Value> = cars
        .iter()
        .map(|car| json!({ "carId": car["id"], "name": car["name"], "stock": car["stock"], "available": car["available"] }))
        .collect();
    if view != rentcar_as_view {
        return Ok(None);
    }
    if !loyalty_balances(host, orders).await? {
        return Ok(None);
    }
    let count = |status: &str| orders.iter().filter(|o| o["status"] == status).count();
    let abandoned = payments
        .iter()
        .filter(|p| !orders_by_id.contains_key(&p["orderId"].as_u64().unwrap()))
        .count();
    Ok(Some(format!(
        "{} orders: {} reserved, {} rejected, {} cancelled; {} payments, {abandoned} abandoned and refunded",
        orders.len(),
        count("RESERVED"),
        count("REJECTED"),
        count("CANCELLED"),
        payments.len()
    )))
}

/// The component's wasm with a custom section appended: the same program,
/// another content digest, i.e. another version.
pub fn variant(name: &str, tag: &str) -> anyhow::Result<Vec<u8>> {
    let mut wasm = std::fs::read(wasm(name))?;
    let section_name = b"rentcar-test-version";
    let mut payload = leb128(section_name.len());
    payload.extend_from_slice(section_name);
    payload.extend_from_slice(tag.as_bytes());
    wasm.push(0);
    wasm.extend(leb128(payload.len()));
    wasm.extend(payload);
    Ok(wasm)
}

fn leb128(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// `RENTCAR_TEST_NODES=2` runs the suite on two nodes: every host a test
/// starts from the repository's components is node a (order, payment and
/// the rest) and node b (rentcar and view), on Kafka.
fn on_two_nodes() -> bool {
    std::env::var("RENTCAR_TEST_NODES").as_deref() == Ok("2")
}

/// Where node b keeps its data, beside node a's.
pub fn partner_dir(data_dir: &Path) -> PathBuf {
    data_dir.with_extension("node-b")
}

/// On two nodes, a copy of `config` (already on Kafka) that places rentcar
/// and view on node b and the rest on node a, on free ports; `None` when
/// the suite runs on one node, or `config` is not the system's.
pub fn split(config: &Path, data_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    if !on_two_nodes() {
        return Ok(None);
    }
    let mut table: toml::Table = std::fs::read_to_string(config)?.parse()?;
    let Some(components) = table.get("components").and_then(toml::Value::as_table) else {
        return Ok(None);
    };
    let on_b = ["rentcar", "view"];
    if table.contains_key("nodes") || !on_b.iter().all(|name| components.contains_key(*name)) {
        return Ok(None);
    }
    anyhow::ensure!(
        broker::on_kafka(),
        "two nodes share their events on Kafka: set RENTCAR_TEST_BUS=kafka"
    );
    let on_a: Vec<String> = components
        .keys()
        .filter(|name| !on_b.contains(&name.as_str()))
        .cloned()
        .collect();
    let node = |port: u16, components: Vec<String>| {
        toml::Value::Table(toml::Table::from_iter([
            (
                "url".to_string(),
                toml::Value::String(format!("http://127.0.0.1:{port}")),
            ),
            (
                "components".to_string(),
                toml::Value::try_from(components).expect("a list"),
            ),
        ]))
    };
    let nodes = toml::Table::from_iter([
        ("a".to_string(), node(broker::free_port()?, on_a)),
        (
            "b".to_string(),
            node(broker::free_port()?, on_b.map(String::from).to_vec()),
        ),
    ]);
    table.insert("nodes".into(), toml::Value::Table(nodes));
    let cluster = toml::Table::from_iter([("secret".to_string(), toml::Value::String(CLUSTER_SECRET.into()))]);
    table.insert("cluster".into(), toml::Value::Table(cluster));
    let path = data_dir.with_extension("nodes.toml");
    std::fs::write(&path, toml::to_string(&table)?)?;
    Ok(Some(path))
}
