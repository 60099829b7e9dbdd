//! Several nodes: real processes on loopback, each running some of the
//! components, joined by a real Kafka-protocol broker. Any node answers any
//! route, linked calls cross nodes, and only nodes reach each other's
//! `/_cluster` endpoints.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::broker;
use crate::harness::{
    CLUSTER_SECRET as SECRET, Host, TOKEN, books_balance, client, eventually, two_nodes_config, wait_for, wasm,
};

/// Where the components run: node a and node b.
struct Placement {
    a: &'static [&'static str],
    b: &'static [&'static str],
}

/// The placement: the core on a, the fleet and its view on b.
const CORE_ON_A: Placement = Placement {
    a: &["order", "payment", "loyalty"],
    b: &["rentcar", "view"],
};

/// Payment apart from its caller, so that every order calls across nodes.
const PAYMENT_ON_B: Placement = Placement {
    a: &["order", "loyalty"],
    b: &["payment", "rentcar", "view"],
};

fn cluster_config(dir: &Path, placement: &Placement, extra: &str) -> anyhow::Result<PathBuf> {
    two_nodes_config(dir, placement.a, placement.b, &broker::shared()?, extra)
}

/// Node `name` of `config`, with its data in `dir/name`.
fn node(config: &Path, dir: &Path, name: &str) -> anyhow::Result<Host> {
    Host::start_with_args(config, &dir.join(name), &["--node", name])
}

/// Node b first, so that node a checks its links against it at start.
fn start_two(dir: &Path, placement: &Placement) -> anyhow::Result<(Host, Host, PathBuf)> {
    let config = cluster_config(dir, placement, "")?;
    let b = node(&config, dir, "b")?;
    let a = node(&config, dir, "a")?;
    Ok((a, b, config))
}

async fn settled(host: &Host) -> anyhow::Result<String> {
    eventually("the books to balance", Duration::from_secs(60), || books_balance(host)).await
}

#[tokio::test]
async fn the_core_flows_through_either_node() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b, _) = start_two(dir.path(), &CORE_ON_A)?;
    // rentcar runs on b; the car is registered through a, with a request
    // id that b's log must show.
    let response = client()
        .post(format!("{}/cars", a.base))
        .header("x-request-id", "through-node-a-7")
        .json(&json!({ "name": "Ioniq", "stock": 5 }))
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    let car = response.json::<Value>().await?["id"].as_u64().unwrap();
    b.logged("through-node-a-7").await?;
    wait_for(&a, &format!("/availability/{car}"), "available", json!(5)).await?;

    // order runs on a; ordered through b, and cancelled through b.
    let first = b.order(car, 2).await?;
    assert_eq!(first["status"], "PAID", "{first}");
    let second = a.order(car, 1).await?;
    let (status, cancelled) = b.post(&format!("/orders/{}/cancel", second["id"]), json!({})).await?;
    assert_eq!(status, 200, "{cancelled}");
    wait_for(&b, &format!("/availability/{car}"), "available", json!(3)).await?;
    wait_for(&a, &format!("/orders/{}", first["id"]), "status", json!("RESERVED")).await?;

    // An admin action on view, asked of a, is done by b.
    let (status, stopped) = a.admin(reqwest::Method::POST, "/admin/components/view/stop").await?;
    assert_eq!(status, 200, "{stopped}");
    let (_, components) = b.admin(reqwest::Method::GET, "/admin/components").await?;
    let view = components
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "view")
        .cloned();
    assert_eq!(view.unwrap()["state"], "stopped", "{components}");
    let (status, _) = a.get(&format!("/availability/{car}")).await?;
    assert_eq!(status, 503);
    let (status, started) = a.admin(reqwest::Method::POST, "/admin/components/view/start").await?;
    assert_eq!(status, 200, "{started}");

    eprintln!("{}", settled(&a).await?);
    eprintln!("{}", settled(&b).await?);
    Ok(())
}

/// More cars than the load below orders: every order is reserved.
const STOCK: u32 = 1_000;
/// Between two orders of the load.
const PACE: Duration = Duration::from_millis(10);

#[tokio::test]
async fn node_b_killed_under_order_load_loses_no_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, mut b, config) = start_two(dir.path(), &CORE_ON_A)?;
    let car = a.car("Avante", STOCK).await?;
    wait_for(&a, &format!("/availability/{car}"), "available", json!(STOCK)).await?;

    let mut placed = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        a.order(car, 1).await?;
        placed += 1;
        tokio::time::sleep(PACE).await;
    }
    b.kill();
    // b is gone: orders are still taken on a; what b serves is a JSON 503.
    let (status, body) = a.get(&format!("/availability/{car}")).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("node-unavailable")),
        "{body}"
    );
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(3) {
        let order = a.order(car, 1).await?;
        assert_eq!(order["status"], "PAID", "{order}");
        placed += 1;
        tokio::time::sleep(PACE).await;
    }
    let b = {
        drop(b);
        node(&config, dir.path(), "b")?
    };
    // b's consumers take their partitions back once the killed ones'
    // sessions ended (6 s), and catch up.
    eventually("availability to catch up", Duration::from_secs(90), || async {
        let (status, view) = a.get(&format!("/availability/{car}")).await?;
        Ok((status == 200 && view["available"] == json!(STOCK - placed)).then_some(()))
    })
    .await?;
    eprintln!("{placed} orders, {}", settled(&a).await?);
    let orders = a.all("/orders?limit=1000").await?;
    assert_eq!(orders.len(), placed as usize);
    assert!(orders.iter().all(|order| order["status"] == "RESERVED"), "{orders:?}");
    let (_, view) = b.get(&format!("/availability/{car}")).await?;
    assert_eq!(view["available"], json!(STOCK - placed), "{view}");
    Ok(())
}

#[tokio::test]
async fn a_remote_payment_that_is_slow_opens_the_circuit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b, _) = start_two(dir.path(), &PAYMENT_ON_B)?;
    a.logged("checked the link against the callee's node").await?;
    let car = a.car("Tucson", 50).await?;
    // Every order and cancel calls payment on b.
    let order = a.order(car, 1).await?;
    assert_eq!(order["status"], "PAID", "{order}");
    let (status, body) = a.post(&format!("/orders/{}/cancel", order["id"]), json!({})).await?;
    assert_eq!(status, 200, "{body}");
    let (_, payment) = b.get(&format!("/payments/{}", order["paymentId"])).await?;
    assert_eq!(payment["status"], "CANCELLED", "{payment}");

    // payment answers slowly on its node: slow calls count as failures
    // (`slow_call_ms` 500) until a's circuit opens.
    let (status, body) = b.fault("payment", json!({ "delayMs": 700 })).await?;
    assert_eq!(status, 200, "{body}");
    let before = a.all("/orders?limit=1000").await?.len();
    let mut slow = 0;
    let mut refused = None;
    for _ in 0..20 {
        let started = Instant::now();
        let response = client()
            .post(format!("{}/orders", a.base))
            .json(&json!({ "carId": car, "qty": 1, "customer": "kim" }))
            .send()
            .await?;
        if response.status() == 503 {
            let retry_after = response.headers().get("retry-after").cloned();
            refused = Some((started.elapsed(), retry_after, response.json::<Value>().await?));
            break;
        }
        assert_eq!(response.status(), 201);
        slow += 1;
    }
    let (elapsed, retry_after, body) = refused.expect("the circuit opened");
    assert!(elapsed < Duration::from_millis(300), "refused in {elapsed:?}");
    assert!(retry_after.is_some(), "{body}");
    assert!(body["message"].as_str().unwrap().contains("circuit open"), "{body}");
    let (_, links) = a.admin(reqwest::Method::GET, "/admin/links").await?;
    assert_eq!(links[0]["circuit"], "open", "{links}");
    // Slow calls succeeded; what was refused left nothing behind.
    assert!(slow > 0);
    assert_eq!(a.all("/orders?limit=1000").await?.len(), before + slow);

    b.admin(reqwest::Method::DELETE, "/admin/faults/payment").await?;
    eprintln!("{}", settled(&a).await?);
    Ok(())
}

#[tokio::test]
async fn only_nodes_reach_the_cluster_endpoints() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, _b, _) = start_two(dir.path(), &PAYMENT_ON_B)?;
    let call = json!({ "interface": "rentcar:payment/payments@0.1.0", "function": "lookup",
                       "signature": "func(payment-id: u32) -> result<u32, u32>", "params": ["1"] });
    let url = format!("{}/_cluster/calls/payment", a.base);
    let plain = reqwest::Client::new();
    for secret in [None, Some("a wrong secret of some length")] {
        let mut request = plain.post(&url).json(&call);
        let mut public = plain.get(format!("{}/orders", a.base));
        if let Some(secret) = secret {
            request = request.header("rentcar-cluster-secret", secret);
            public = public.header("rentcar-cluster-secret", secret);
        }
        let response = request.send().await?;
        assert_eq!(response.status(), 401, "{secret:?}");
        let body: Value = response.json().await?;
        assert_eq!(body["error"], "unauthorized", "{body}");
        let response = public.send().await?;
        assert_eq!(response.status(), 401, "{secret:?}");
    }
    // With the secret, a call whose types are not payment's is refused.
    let response = plain
        .post(format!("{}/_cluster/calls/payment", _b.base))
        .header("rentcar-cluster-secret", SECRET)
        .json(&call)
        .send()
        .await?;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await?;
    assert_eq!(body["error"], "interface-mismatch", "{body}");
    Ok(())
}

#[tokio::test]
async fn a_payment_whose_interface_changed_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, _b, _) = start_two(dir.path(), &PAYMENT_ON_B)?;
    // At deploy on payment's node (asked of a, done by b): order on a was
    // checked against the running payment.
    let response = client()
        .put(format!("{}/admin/components/payment", a.base))
        .bearer_auth(TOKEN)
        .body(std::fs::read(wasm("changed_payment"))?)
        .send()
        .await?;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await?;
    assert!(
        body["message"].as_str().unwrap().contains("callers on other nodes"),
        "{body}"
    );
    let order = a.order(a.car("Kona", 3).await?, 1).await?;
    assert_eq!(order["status"], "PAID", "{order}");

    // When the caller's node checks: b runs the changed payment from the
    // start; a refuses to start.
    let other = tempfile::tempdir()?;
    let config = cluster_config(other.path(), &PAYMENT_ON_B, "")?;
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        text.replace("release/payment.wasm", "release/changed_payment.wasm"),
    )?;
    let _b = node(&config, other.path(), "b")?;
    let refused = match node(&config, other.path(), "a") {
        Ok(_) => panic!("node a started against a changed payment"),
        Err(err) => format!("{err:#}"),
    };
    assert!(refused.contains("function `approve`"), "{refused}");
    Ok(())
}
