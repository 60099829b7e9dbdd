//! Many parallel orders and cancels: no car is ever over-booked, and
//! rentcar, orders and the view agree once events settle.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};

use crate::harness::{Host, books_balance, eventually};

#[tokio::test]
async fn parallel_orders_never_overbook() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let mut cars = Vec::new();
    for (name, stock) in [("K3", 3), ("K5", 4), ("K8", 2)] {
        cars.push(host.car(name, stock).await?);
    }

    // 60 orders at once, 1 or 2 cars each: far more than the 9 in stock.
    let orders = join_all((0..60u32).map(|i| {
        let (host, car) = (&host, cars[i as usize % cars.len()]);
        async move { host.order(car, 1 + i % 2).await }
    }))
    .await;
    let orders: Vec<Value> = orders.into_iter().collect::<anyhow::Result<_>>()?;

    // Cancel a third of them while their events are still in flight.
    let cancels = join_all(orders.iter().step_by(3).map(|order| {
        let path = format!("/orders/{}/cancel", order["id"]);
        let host = &host;
        async move { host.post(&path, json!({})).await }
    }))
    .await;
    for cancel in cancels {
        let (status, body) = cancel?;
        assert!(status == 200 || status == 409, "cancel answered {status}: {body}");
    }

    let summary = eventually(
        "every order to settle and the books to balance",
        Duration::from_secs(60),
        || books_balance(&host),
    )
    .await?;
    let settled = host.all("/orders").await?;
    let statuses: Vec<&str> = settled.iter().map(|o| o["status"].as_str().unwrap()).collect();
    assert!(
        statuses.contains(&"RESERVED") && statuses.contains(&"REJECTED"),
        "{summary}"
    );
    Ok(())
}
