//! Callers' mistakes get clear 4xx JSON errors, never a 500.

use serde_json::{Value, json};

use crate::harness::Host;

fn assert_error(status: u16, body: &Value, expected: u16, what: &str) {
    assert_eq!(status, expected, "{what}: {body}");
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{what}: not a JSON error: {body}"
    );
}

#[tokio::test]
async fn bad_input_gets_4xx_json_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car_id = host.car("Ray", 2).await?;

    let bad_orders = [
        ("malformed JSON", "{\"carId\": 1,".to_string()),
        ("not an object", "[1,2]".to_string()),
        ("empty body", String::new()),
        ("missing qty", json!({ "carId": car_id, "customer": "kim" }).to_string()),
        (
            "zero qty",
            json!({ "carId": car_id, "qty": 0, "customer": "kim" }).to_string(),
        ),
        (
            "negative qty",
            json!({ "carId": car_id, "qty": -1, "customer": "kim" }).to_string(),
        ),
        (
            "huge qty",
            json!({ "carId": car_id, "qty": 1_000_000, "customer": "kim" }).to_string(),
        ),
        (
            "qty as string",
            json!({ "carId": car_id, "qty": "1", "customer": "kim" }).to_string(),
        ),
        (
            "fractional qty",
            json!({ "carId": car_id, "qty": 1.5, "customer": "kim" }).to_string(),
        ),
        (
            "negative carId",
            json!({ "carId": -3, "qty": 1, "customer": "kim" }).to_string(),
        ),
        (
            "unknown field",
            json!({ "carId": car_id, "qty": 1, "customer": "kim", "x": 1 }).to_string(),
        ),
    ];
    for (what, body) in bad_orders {
        let (status, response) = host.post_raw("/orders", body).await?;
        assert_error(status, &response, 400, what);
    }
    let bad_cars = [
        ("missing stock", json!({ "name": "A" })),
        ("negative stock", json!({ "name": "A", "stock": -1 })),
        ("empty name", json!({ "name": "", "stock": 1 })),
        ("name not a string", json!({ "name": 5, "stock": 1 })),
    ];
    for (what, body) in bad_cars {
        let (status, response) = host.post("/cars", body).await?;
        assert_error(status, &response, 400, what);
    }
    assert!(host.all("/orders").await?.is_empty(), "no bad request created an order");

    for path in [
        "/cars/999",
        "/orders/999",
        "/payments/999",
        "/availability/999",
        "/nowhere",
        "/",
    ] {
        let (status, response) = host.get(path).await?;
        assert_error(status, &response, 404, path);
    }
    for path in ["/cars/abc", "/orders/-1", "/payments/x", "/payments?orderId=abc"] {
        let (status, response) = host.get(path).await?;
        assert_error(status, &response, 400, path);
    }
    let (status, response) = host.post("/orders/999/cancel", json!({})).await?;
    assert_error(status, &response, 404, "cancel of an unknown order");

    let too_big = format!("{{\"name\":\"{}\",\"stock\":1}}", "x".repeat(2 * 1024 * 1024));
    let (status, response) = host.post_raw("/cars", too_big).await?;
    assert_error(status, &response, 413, "2 MiB body");

    let (status, response) = host
        .send(crate::harness::client().delete(format!("{}/cars/1", host.base)))
        .await?;
    assert_error(status, &response, 405, "DELETE /cars/1");

    let latin1 = reqwest::header::HeaderValue::from_bytes(b"caf\xe9")?;
    let request = crate::harness::client()
        .get(format!("{}/cars", host.base))
        .header(reqwest::header::HOST, latin1);
    let (status, response) = host.send(request).await?;
    assert_error(status, &response, 400, "a Host header that is not ASCII");
    Ok(())
}

#[tokio::test]
async fn admin_api_requires_the_token() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let client = reqwest::Client::new();
    let url = format!("{}/admin/components/payment/stop", host.base);
    let (status, body) = host.send(client.post(&url)).await?;
    assert_error(status, &body, 401, "no token");
    let (status, body) = host.send(client.post(&url).bearer_auth("wrong")).await?;
    assert_error(status, &body, 401, "wrong token");
    let (status, body) = host.admin(reqwest::Method::POST, "/admin/components/nope/stop").await?;
    assert_error(status, &body, 404, "unknown component");
    let (status, body) = host.admin(reqwest::Method::GET, "/admin/components").await?;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().map(Vec::len), Some(5), "{body}");
    Ok(())
}
