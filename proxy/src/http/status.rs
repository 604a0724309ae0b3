//! The admin listener's read-only pages besides `/metrics`: `/health` (the cached deep check,
//! for load balancers) and `/status` (a small HTML page for people).
//!
//! `/status` is rendered from the same exposition text `/metrics` serves, parsed back, so the
//! page can never disagree with the metrics: health per member, request count and rate,
//! errors, latency percentiles (upper bounds of the histogram bucket holding each quantile,
//! the resolution the histogram has), key counts, certificate expiry. It refreshes itself
//! (`<meta http-equiv="refresh">`, no script). Same access as `/metrics`: whoever reaches the
//! admin listener; it shows nothing `/metrics` does not.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hyper::StatusCode;

use crate::state::App;

/// Seconds between the page's own refreshes.
const REFRESH_SECS: u32 = 5;

/// `/health`: 200 with the GetHealthStatus body while the deep check is ACTIVE or DEGRADED,
/// 503 when it is UNAVAILABLE (HAProxy's `http-check expect status 200` takes the proxy out).
pub fn health(app: &App) -> (StatusCode, &'static str, String) {
    let status = app.health.status();
    let body = serde_json::to_string(&app.health.report()).unwrap_or_default();
    let code = if status == "UNAVAILABLE" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, "application/json", body + "\n")
}

/// One sample of the exposition text: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name with its suffix (`_total`, `_bucket`, ...).
    pub name: String,
    /// Label pairs.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parse Prometheus/OpenMetrics text (the subset our encoder writes: no escapes in label
/// values other than `\"`, which label values here never contain).
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(p) => p,
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim_matches('"').to_string()))
            .collect();
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// The figures the page shows, computed from the samples.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    /// All API requests.
    pub requests: f64,
    /// Requests whose outcome is not `ok`.
    pub errors: f64,
    /// Errors by outcome (errorName).
    pub errors_by_outcome: BTreeMap<String, f64>,
    /// Upper bounds (seconds) of the buckets holding p50, p90, p99; `None` with no requests.
    pub p50: Option<f64>,
    /// See `p50`.
    pub p90: Option<f64>,
    /// See `p50`.
    pub p99: Option<f64>,
    /// Keys by state.
    pub keys: BTreeMap<String, f64>,
    /// Health (2/1/0) by member, or by backend when the module reports no members.
    pub health: BTreeMap<String, f64>,
    /// Certificate notAfter (Unix seconds), when serving TLS.
    pub cert_expiry: Option<f64>,
}

fn quantile(buckets: &BTreeMap<u64, (f64, f64)>, q: f64) -> Option<f64> {
    let total = buckets.values().map(|(_, c)| *c).fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    buckets
        .values()
        .find(|(_, cum)| *cum >= q * total)
        .map(|(le, _)| *le)
}

/// Summarise the samples (`/metrics` text parsed by [`parse_exposition`]).
pub fn summarise(samples: &[Sample]) -> Summary {
    let mut s = Summary::default();
    // le (as ordered bits of the f64, positive values sort like the numbers) -> (le, count).
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    let mut members = BTreeMap::new();
    let mut backends = BTreeMap::new();
    for x in samples {
        let label = |k: &str| x.labels.get(k).cloned().unwrap_or_default();
        match x.name.as_str() {
            "xki_proxy_requests_total" => {
                s.requests += x.value;
                let outcome = label("outcome");
                if outcome != "ok" {
                    s.errors += x.value;
                    *s.errors_by_outcome.entry(outcome).or_default() += x.value;
                }
            }
            "xki_proxy_request_duration_seconds_bucket" => {
                let le = label("le");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += x.value;
            }
            "xki_proxy_keys" => {
                s.keys.insert(label("state"), x.value);
            }
            "xki_proxy_member_health" => {
                members.insert(label("member"), x.value);
            }
            "xki_proxy_backend_health" => {
                backends.insert(label("backend"), x.value);
            }
            "xki_proxy_tls_certificate_expiry_seconds" => s.cert_expiry = Some(x.value),
            _ => {}
        }
    }
    s.p50 = quantile(&buckets, 0.5);
    s.p90 = quantile(&buckets, 0.9);
    s.p99 = quantile(&buckets, 0.99);
    s.health = if members.is_empty() {
        backends
    } else {
        members
    };
    s
}

fn health_word(v: f64) -> &'static str {
    match v as i64 {
        2 => "ACTIVE",
        1 => "DEGRADED",
        _ => "UNAVAILABLE",
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{:.3}", x * 1000.0),
        Some(_) => "+Inf".into(),
        None => "-".into(),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `/status`: the HTML page.
pub fn page(app: &App) -> (StatusCode, &'static str, String) {
    let text = app.metrics.render(&app.hsm, &app.health);
    let s = summarise(&parse_exposition(&text));
    let rate = app.metrics.request_rate(s.requests);
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>xki-proxy status</title><style>body{{font-family:sans-serif;margin:1.5em}}\
         td,th{{padding:.2em .8em;text-align:left}}.ACTIVE{{color:#070}}.DEGRADED{{color:#a60}}\
         .UNAVAILABLE{{color:#b00}}</style></head><body>\
         <h1>xki-proxy status</h1><p>token <b>{}</b>, module {}; refreshes every {REFRESH_SECS} s; \
         same figures as <a href=\"/metrics\">/metrics</a></p>",
        esc(&app.hsm.token.label),
        esc(&app.hsm.module.display().to_string())
    );
    h.push_str("<h2>HSM members</h2><table><tr><th>member</th><th>health</th></tr>");
    for (name, v) in &s.health {
        let w = health_word(*v);
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"{w}\" data-member=\"{}\">{w}</td></tr>",
            esc(name),
            esc(name)
        );
    }
    h.push_str("</table><h2>Requests</h2><table>");
    let row = |h: &mut String, id: &str, what: &str, v: String| {
        let _ = write!(h, "<tr><th>{what}</th><td id=\"{id}\">{v}</td></tr>");
    };
    row(
        &mut h,
        "requests-total",
        "requests",
        format!("{}", s.requests),
    );
    row(&mut h, "request-rate", "rate (req/s)", format!("{rate:.1}"));
    row(&mut h, "errors-total", "errors", format!("{}", s.errors));
    for (outcome, n) in &s.errors_by_outcome {
        let _ = write!(
            h,
            "<tr><th>&nbsp;&nbsp;{}</th><td data-outcome=\"{}\">{n}</td></tr>",
            esc(outcome),
            esc(outcome)
        );
    }
    row(&mut h, "latency-p50", "latency p50 (ms, &le;)", ms(s.p50));
    row(&mut h, "latency-p90", "latency p90 (ms, &le;)", ms(s.p90));
    row(&mut h, "latency-p99", "latency p99 (ms, &le;)", ms(s.p99));
    h.push_str("</table><h2>Keys</h2><table>");
    for state in ["enabled", "disabled", "pending_deletion"] {
        let v = s
            .keys
            .get(state)
            .map_or("-".to_string(), |n| format!("{n}"));
        row(&mut h, &format!("keys-{state}"), state, v);
    }
    h.push_str("</table><h2>TLS certificate</h2><table>");
    match s.cert_expiry {
        Some(t) => {
            let days = (t - crate::http::tls::unix_now() as f64) / 86_400.0;
            let date = crate::hsm::Date::from_days((t as i64).div_euclid(86_400));
            row(&mut h, "cert-expiry", "expires (Unix time)", format!("{t}"));
            row(&mut h, "cert-expiry-date", "expires", format!("{date}"));
            row(&mut h, "cert-days-left", "days left", format!("{days:.0}"));
        }
        None => row(
            &mut h,
            "cert-expiry",
            "expires",
            "no TLS (plain HTTP)".into(),
        ),
    }
    h.push_str("</table></body></html>\n");
    (StatusCode::OK, "text/html; charset=utf-8", h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_from_exposition() {
        let text = "# TYPE x counter\n\
            xki_proxy_requests_total{operation=\"Encrypt\",outcome=\"ok\"} 90\n\
            xki_proxy_requests_total{operation=\"Decrypt\",outcome=\"ok\"} 8\n\
            xki_proxy_requests_total{operation=\"Decrypt\",outcome=\"ThrottlingException\"} 2\n\
            xki_proxy_request_duration_seconds_bucket{le=\"0.001\",operation=\"Encrypt\"} 50\n\
            xki_proxy_request_duration_seconds_bucket{le=\"0.002\",operation=\"Encrypt\"} 89\n\
            xki_proxy_request_duration_seconds_bucket{le=\"+Inf\",operation=\"Encrypt\"} 90\n\
            xki_proxy_request_duration_seconds_bucket{le=\"0.001\",operation=\"Decrypt\"} 5\n\
            xki_proxy_request_duration_seconds_bucket{le=\"0.002\",operation=\"Decrypt\"} 10\n\
            xki_proxy_request_duration_seconds_bucket{le=\"+Inf\",operation=\"Decrypt\"} 10\n\
            xki_proxy_keys{state=\"enabled\"} 3\n\
            xki_proxy_member_health{member=\"hsm-a\"} 2\n\
            xki_proxy_backend_health{backend=\"t/1\"} 2\n\
            xki_proxy_tls_certificate_expiry_seconds{listener=\"api\"} 1800000000\n\
            # EOF\n";
        let s = summarise(&parse_exposition(text));
        assert_eq!(s.requests, 100.0);
        assert_eq!(s.errors, 2.0);
        assert_eq!(s.errors_by_outcome["ThrottlingException"], 2.0);
        assert_eq!(s.p50, Some(0.001)); // 55 of 100 at <= 1 ms
        assert_eq!(s.p90, Some(0.002));
        assert_eq!(s.p99, Some(0.002)); // 99 of 100 at <= 2 ms
        assert_eq!(s.keys["enabled"], 3.0);
        assert_eq!(s.health.keys().collect::<Vec<_>>(), ["hsm-a"]);
        assert_eq!(s.cert_expiry, Some(1.8e9));
    }
}
