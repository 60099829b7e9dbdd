//! Many parallel orders and cancels: no car is ever over-booked, and
//! rentcar, orders and the view agree once events settle.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};

use crate::harness::{Host, eventually};

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

    let settled = eventually("every order to settle and the books to balance", Duration::from_secs(60), || async {
        let (_, all) = host.get("/orders").await?;
        let all = all.as_array().cloned().unwrap_or_default();
        if all.iter().any(|order| order["status"] == "PAID") {
            return Ok(None);
        }
        let mut held: HashMap<u64, i64> = HashMap::new();
        for order in all.iter().filter(|order| order["status"] == "RESERVED") {
            *held.entry(order["carId"].as_u64().unwrap()).or_default() += order["qty"].as_i64().unwrap();
        }
        let (_, fleet) = host.get("/cars").await?;
        let (_, view) = host.get("/availability").await?;
        for car in fleet.as_array().unwrap() {
            let (stock, available) = (car["stock"].as_i64().unwrap(), car["available"].as_i64().unwrap());
            assert!(available >= 0, "car over-booked: {car}");
            let reserved = held.get(&car["id"].as_u64().unwrap()).copied().unwrap_or(0);
            assert!(reserved <= stock, "more reserved than in stock: {car}, {reserved} reserved");
            if stock != available + reserved {
                return Ok(None);
            }
        }
        let fleet_as_view: Vec<Value> = fleet
            .as_array()
            .unwrap()
            .iter()
            .map(|car| json!({ "carId": car["id"], "name": car["name"], "stock": car["stock"], "available": car["available"] }))
            .collect();
        Ok((view == json!(fleet_as_view)).then_some(all))
    })
    .await?;

    let statuses: Vec<&str> = settled.iter().map(|order| order["status"].as_str().unwrap()).collect();
    assert!(
        statuses.contains(&"RESERVED") && statuses.contains(&"REJECTED"),
        "{statuses:?}"
    );
    let (_, payments) = host.get("/payments").await?;
    for order in &settled {
        let payment = payments
            .as_array()
            .unwrap()
            .iter()
            .find(|payment| payment["id"] == order["paymentId"])
            .expect("every order has its payment");
        let expected = match order["status"].as_str().unwrap() {
            "RESERVED" => "APPROVED",
            "REJECTED" => "REFUNDED",
            _ => "CANCELLED",
        };
        assert_eq!(payment["status"], expected, "order {order} has payment {payment}");
    }
    Ok(())
}
