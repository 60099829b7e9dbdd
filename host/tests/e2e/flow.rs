//! The business flows: order -> payment -> reservation -> view, cancel,
//! rejection with refund.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Host, runtime_toml_with, wait_for};

#[tokio::test]
async fn order_is_paid_reserved_and_shown_in_the_view() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;

    let (status, car) = host.post("/cars", json!({ "name": "Avante", "stock": 3 })).await?;
    assert_eq!(status, 201);
    assert_eq!(car["name"], "Avante");
    assert_eq!(car["stock"], 3);
    assert_eq!(car["available"], 3);
    let car_id = car["id"].as_u64().unwrap();

    let order = host.order(car_id, 1).await?;
    assert_eq!(order["status"], "PAID");
    assert_eq!(order["carId"], car_id);
    assert_eq!(order["qty"], 1);
    assert_eq!(order["customer"], "kim");
    let order_id = order["id"].as_u64().unwrap();
    let payment_id = order["paymentId"].as_u64().expect("a paid order has its payment");

    // Authorized with the order; approved once payment hears the order
    // placed, and only then does rentcar reserve.
    let (status, payment) = host.get(&format!("/payments/{payment_id}")).await?;
    assert_eq!(status, 200);
    assert!(
        matches!(payment["status"].as_str(), Some("AUTHORIZED" | "APPROVED")),
        "{payment}"
    );
    assert_eq!(payment["orderId"], order_id);
    let by_order = host.all(&format!("/payments?orderId={order_id}")).await?;
    assert_eq!(by_order.len(), 1, "{by_order:?}");

    wait_for(&host, &format!("/orders/{order_id}"), "status", json!("RESERVED")).await?;
    let (_, payment) = host.get(&format!("/payments/{payment_id}")).await?;
    assert_eq!(payment["status"], "APPROVED", "{payment}");
    let view = wait_for(&host, &format!("/availability/{car_id}"), "available", json!(2)).await?;
    assert_eq!(
        view,
        json!({ "carId": car_id, "name": "Avante", "stock": 3, "available": 2 })
    );
    let (_, car) = host.get(&format!("/cars/{car_id}")).await?;
    assert_eq!(car["available"], 2);

    // rentcar reads its settings from runtime.toml through wasi:config.
    let (_, fleet) = host.get("/fleet").await?;
    assert_eq!(
        fleet,
        json!({ "country": "KR", "region": "seoul", "models": 1, "stock": 3 })
    );
    Ok(())
}

#[tokio::test]
async fn cancel_refunds_nothing_twice_and_restores_availability() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car_id = host.car("Sonata", 2).await?;
    let order = host.order(car_id, 2).await?;
    let order_id = order["id"].as_u64().unwrap();
    wait_for(&host, &format!("/orders/{order_id}"), "status", json!("RESERVED")).await?;
    wait_for(&host, &format!("/availability/{car_id}"), "available", json!(0)).await?;

    let (status, cancelled) = host.post(&format!("/orders/{order_id}/cancel"), json!({})).await?;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "CANCELLED");
    let (_, payment) = host.get(&format!("/payments/{}", order["paymentId"])).await?;
    assert_eq!(payment["status"], "CANCELLED");

    wait_for(&host, &format!("/availability/{car_id}"), "available", json!(2)).await?;
    wait_for(&host, &format!("/cars/{car_id}"), "available", json!(2)).await?;

    let (status, again) = host.post(&format!("/orders/{order_id}/cancel"), json!({})).await?;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["error"], "conflict");
    Ok(())
}

#[tokio::test]
async fn an_order_beyond_stock_is_rejected_and_refunded() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car_id = host.car("Grandeur", 1).await?;
    let order = host.order(car_id, 2).await?;
    let order_id = order["id"].as_u64().unwrap();

    wait_for(&host, &format!("/orders/{order_id}"), "status", json!("REJECTED")).await?;
    wait_for(
        &host,
        &format!("/payments/{}", order["paymentId"]),
        "status",
        json!("REFUNDED"),
    )
    .await?;
    let (_, car) = host.get(&format!("/cars/{car_id}")).await?;
    assert_eq!(car["available"], 1, "a rejected order holds nothing");

    let (status, body) = host.post(&format!("/orders/{order_id}/cancel"), json!({})).await?;
    assert_eq!(status, 409, "a rejected order cannot be cancelled: {body}");

    // An order for a car that does not exist is rejected the same way.
    let ghost = host.order(9_999, 1).await?;
    wait_for(&host, &format!("/orders/{}", ghost["id"]), "status", json!("REJECTED")).await?;
    Ok(())
}

#[tokio::test]
async fn payment_down_means_503_and_no_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car_id = host.car("Morning", 5).await?;

    let (status, _) = host
        .admin(reqwest::Method::POST, "/admin/components/payment/stop")
        .await?;
    assert_eq!(status, 200);
    let (status, body) = host
        .post("/orders", json!({ "carId": car_id, "qty": 1, "customer": "lee" }))
        .await?;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "payment-unavailable");
    assert!(
        host.all("/orders").await?.is_empty(),
        "no order exists without a payment"
    );

    host.admin(reqwest::Method::POST, "/admin/components/payment/start")
        .await?;
    let order = host.order(car_id, 1).await?;
    let order_id = order["id"].as_u64().unwrap();
    wait_for(&host, &format!("/orders/{order_id}"), "status", json!("RESERVED")).await?;

    // Cancelling while payment is down keeps the order as it was.
    host.admin(reqwest::Method::POST, "/admin/components/payment/stop")
        .await?;
    let (status, _) = host.post(&format!("/orders/{order_id}/cancel"), json!({})).await?;
    assert_eq!(status, 503);
    let (_, still) = host.get(&format!("/orders/{order_id}")).await?;
    assert_eq!(still["status"], "RESERVED");
    Ok(())
}

#[tokio::test]
async fn orders_are_taken_while_rentcar_is_down_and_applied_when_it_returns() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car_id = host.car("Tucson", 4).await?;
    wait_for(&host, &format!("/availability/{car_id}"), "available", json!(4)).await?;

    let (status, _) = host
        .admin(reqwest::Method::POST, "/admin/components/rentcar/stop")
        .await?;
    assert_eq!(status, 200);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(host.order(car_id, 1).await?["id"].as_u64().unwrap());
    }
    let (status, _) = host.get(&format!("/cars/{car_id}")).await?;
    assert_eq!(status, 503, "rentcar's own routes are down");
    let (_, order) = host.get(&format!("/orders/{}", ids[0])).await?;
    assert_eq!(order["status"], "PAID", "no reservation while rentcar is down");

    host.admin(reqwest::Method::POST, "/admin/components/rentcar/start")
        .await?;
    for id in ids {
        wait_for(&host, &format!("/orders/{id}"), "status", json!("RESERVED")).await?;
    }
    wait_for(&host, &format!("/availability/{car_id}"), "available", json!(1)).await?;
    Ok(())
}

#[tokio::test]
async fn a_retried_order_with_the_same_idempotency_key_creates_nothing_new() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car_id = host.car("Niro", 5).await?;
    let body = json!({ "carId": car_id, "qty": 1, "customer": "park" });
    let post = || {
        crate::harness::client()
            .post(format!("{}/orders", host.base))
            .header("Idempotency-Key", "retry-42")
            .json(&body)
    };
    let (status, first) = host.send(post()).await?;
    assert_eq!(status, 201, "{first}");
    let (status, second) = host.send(post()).await?;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["paymentId"], first["paymentId"]);
    assert_eq!(host.all("/orders").await?.len(), 1);
    assert_eq!(host.all("/payments").await?.len(), 1);

    let other = crate::harness::client()
        .post(format!("{}/orders", host.base))
        .header("Idempotency-Key", "retry-42")
        .json(&json!({ "carId": car_id, "qty": 2, "customer": "park" }));
    let (status, reused) = host.send(other).await?;
    assert_eq!(status, 422, "{reused}");
    Ok(())
}

#[tokio::test]
async fn concurrent_orders_with_one_idempotency_key_place_one_order_and_pay_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car_id = host.car("Ioniq", 10).await?;
    let body = json!({ "carId": car_id, "qty": 1, "customer": "lee" });
    let client = crate::harness::client();
    // Slow payment calls, so that every request arrives while the first
    // one is still paying.
    assert_eq!(host.fault("payment", json!({ "delayMs": 400 })).await?.0, 200);
    let post = || {
        let request = client
            .post(format!("{}/orders", host.base))
            .header("Idempotency-Key", "double-click")
            .json(&body);
        host.send(request)
    };
    let answers = futures::future::try_join_all((0..8).map(|_| post())).await?;
    let placed: Vec<_> = answers.iter().filter(|(status, _)| *status == 201).collect();
    assert_eq!(placed.len(), 1, "one request places the order: {answers:?}");
    for (status, answer) in &answers {
        // The others find the key taken while the first one pays.
        assert!(
            *status == 201 || (*status == 409 && answer["error"] == "order-in-progress"),
            "{status} {answer}"
        );
    }
    let order = placed[0].1.clone();

    // Once placed, the key answers with the order, as before.
    let (status, again) = post().await?;
    assert_eq!((status, &again["id"]), (201, &order["id"]), "{again}");
    let orders = host.all("/orders").await?;
    assert_eq!(orders.len(), 1, "{orders:?}");
    let payments = host.all("/payments").await?;
    assert_eq!(payments.len(), 1, "only the winner paid: {payments:?}");
    wait_for(&host, &format!("/availability/{car_id}"), "available", json!(9)).await?;
    Ok(())
}

#[tokio::test]
async fn an_order_whose_client_hung_up_is_still_placed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car_id = host.car("Casper", 2).await?;
    let client = crate::harness::client();
    assert_eq!(host.fault("payment", json!({ "delayMs": 1500 })).await?.0, 200);

    // The client gives up while payment is still being called.
    let hung_up = client
        .post(format!("{}/orders", host.base))
        .timeout(Duration::from_millis(300))
        .json(&json!({ "carId": car_id, "qty": 1, "customer": "yoon" }))
        .send()
        .await;
    assert!(hung_up.is_err_and(|err| err.is_timeout()));

    // The request ran to its end all the same: paid, placed, reserved.
    let order = crate::harness::eventually("the order", Duration::from_secs(10), || async {
        Ok(host.all("/orders").await?.first().cloned())
    })
    .await?;
    wait_for(&host, &format!("/orders/{}", order["id"]), "status", json!("RESERVED")).await?;
    let payments = host.all("/payments").await?;
    assert_eq!(payments[0]["status"], "APPROVED", "{payments:?}");
    Ok(())
}

/// The window between payment's commit and order's: payment's answer comes
/// back after order has given up on it (a reply delay beyond the link's
/// timeout, 500 ms here), so the payment is taken but no order exists. It
/// holds no car: another customer gets the last one at once. Order abandons
/// it after `abandon_after_ms` (5 s), and payment refunds it.
#[tokio::test]
async fn a_payment_whose_order_never_committed_holds_no_car() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = runtime_toml_with(dir.path(), "")?;
    let toml = std::fs::read_to_string(&config)?;
    std::fs::write(&config, toml.replacen("timeout_ms = 2000", "timeout_ms = 500", 1))?;
    let host = Host::start_with(&config, &dir.path().join("data"))?;
    // One order through the whole chain first: on Kafka the consumer
    // groups settle in the host's first seconds, which the 5 s below must
    // not pay for.
    let warm_up = host.car("Morning", 1).await?;
    let order = host.order(warm_up, 1).await?;
    wait_for(&host, &format!("/orders/{}", order["id"]), "status", json!("RESERVED")).await?;
    let car_id = host.car("Casper", 1).await?;

    assert_eq!(host.fault("payment", json!({ "replyDelayMs": 1000 })).await?.0, 200);
    let (status, body) = host
        .post("/orders", json!({ "carId": car_id, "qty": 1, "customer": "kim" }))
        .await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("payment-unavailable")),
        "{body}"
    );
    assert_eq!(
        host.admin(reqwest::Method::DELETE, "/admin/faults/payment").await?.0,
        204
    );
    let of_casper = |all: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        all.into_iter().filter(|row| row["carId"] == json!(car_id)).collect()
    };
    let payments = of_casper(host.all("/payments").await?);
    assert_eq!(payments.len(), 1, "{payments:?}");
    assert!(of_casper(host.all("/orders").await?).is_empty());

    // Well within the 5 s before kim's payment is abandoned; meanwhile
    // order retries kim's `PaymentAuthorized`, which holds up none of its
    // other subscriptions (lee's `CarReserved`).
    let other = host
        .post("/orders", json!({ "carId": car_id, "qty": 1, "customer": "lee" }))
        .await?;
    assert_eq!(other.0, 201, "{other:?}");
    wait_for(
        &host,
        &format!("/orders/{}", other.1["id"]),
        "status",
        json!("RESERVED"),
    )
    .await?;
    // Kim's payment was authorized, never approved: approval waits for the
    // order placed.
    let orphan = format!("/payments/{}", payments[0]["id"]);
    let (_, payment) = host.get(&orphan).await?;
    assert_eq!(payment["status"], "AUTHORIZED", "{payment}");

    wait_for(&host, &orphan, "status", json!("REFUNDED")).await?;
    let summary = crate::harness::eventually("the books to balance", Duration::from_secs(20), || {
        crate::harness::books_balance(&host)
    })
    .await?;
    assert!(summary.contains("1 abandoned"), "{summary}");
    let (_, car) = host.get(&format!("/cars/{car_id}")).await?;
    assert_eq!(car["available"], 0, "{car}");
    Ok(())
}
