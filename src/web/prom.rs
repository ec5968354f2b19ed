//! `/metrics` in the Prometheus text format (version 0.0.4): seats per key, pool and
//! feature and servers per state, read from the same admin requests as `status`, so the
//! numbers agree with it; counters of grants, moves, expiries and refusals by reason;
//! and the heartbeat latency histogram.

use super::{ask, text, WebContext};
use crate::core::{PoolView, ServerView};
use crate::daemon::metrics::LATENCY_BUCKETS;
use crate::proto::admin::{AdminRequest, Status};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use std::fmt::Write as _;

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        if l.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {value}", l.join(","));
        }
    }
}

pub async fn metrics(ctx: &WebContext) -> Response<Full<Bytes>> {
    let answers = tokio::try_join!(
        ask::<Status>(ctx, AdminRequest::Status),
        ask::<Vec<PoolView>>(ctx, AdminRequest::PoolList),
        ask::<Vec<ServerView>>(ctx, AdminRequest::ServerList),
    );
    let (status, pools, servers) = match answers {
        Ok(a) => a,
        Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
    };
    let body = render(
        &status,
        &pools,
        &servers,
        &ctx.admin.core.metrics.snapshot(),
    );
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

pub fn render(
    status: &Status,
    pools: &[PoolView],
    servers: &[ServerView],
    m: &crate::daemon::metrics::MetricsSnapshot,
) -> String {
    let mut o = Out(String::new());
    o.family("netkey_up", "gauge", "1 while the daemon answers.");
    o.sample("netkey_up", &[], 1);
    type SeatField = fn(&crate::core::SeatUsage) -> u64;
    let fields: [(&str, &str, SeatField); 3] = [
        ("allocated", "Seats allocated (unexpired entries).", |s| {
            s.total
        }),
        (
            "in_use",
            "Seats counted as in use, revoking included.",
            |s| s.in_use,
        ),
        (
            "revoking",
            "Seats of revoked leases not yet acknowledged (still counted).",
            |s| s.revoking,
        ),
    ];
    for (suffix, help, get) in fields {
        let name = format!("netkey_key_seats_{suffix}");
        o.family(&name, "gauge", &format!("{help} Per key and feature."));
        for k in &status.keys {
            for s in &k.seats {
                o.sample(
                    &name,
                    &[("key", &k.key_id), ("feature", &s.feature)],
                    get(s),
                );
            }
        }
        let name = format!("netkey_pool_seats_{suffix}");
        o.family(&name, "gauge", &format!("{help} Per pool and feature."));
        for p in pools {
            for s in &p.seats {
                o.sample(
                    &name,
                    &[
                        ("key", &p.key_id),
                        ("pool", &p.name),
                        ("feature", &s.feature),
                    ],
                    get(s),
                );
            }
        }
    }
    o.family(
        "netkey_servers",
        "gauge",
        "Enrolled video servers per state (live, silent, reservation_ending, kicked).",
    );
    for state in ["live", "silent", "reservation ending", "kicked"] {
        let n = servers.iter().filter(|s| s.state == state).count();
        o.sample("netkey_servers", &[("state", &state.replace(' ', "_"))], n);
    }
    o.family(
        "netkey_cameras_licensed",
        "gauge",
        "Cameras held by a server.",
    );
    o.sample("netkey_cameras_licensed", &[], status.cameras);
    o.family("netkey_audit_records", "gauge", "Records in the audit log.");
    o.sample("netkey_audit_records", &[], status.audit_head.count);
    o.family(
        "netkey_store_failing",
        "gauge",
        "1 while the state store refuses writes (changes are refused).",
    );
    o.sample(
        "netkey_store_failing",
        &[],
        u8::from(status.store_error.is_some()),
    );
    for (name, help, v) in [
        ("netkey_grants_total", "Licences granted.", m.grants),
        (
            "netkey_moves_total",
            "Cameras moved between video servers.",
            m.moves,
        ),
        (
            "netkey_releases_total",
            "Leases ended (released, acknowledged, expired, forced).",
            m.releases,
        ),
        (
            "netkey_revocations_total",
            "Revocations sent to holders.",
            m.revocations,
        ),
        (
            "netkey_forced_overlaps_total",
            "Administrator --force frees and kicks.",
            m.forced_overlaps,
        ),
        (
            "netkey_reservations_ended_total",
            "Silent servers whose reservation ended (expiries).",
            m.reservations_ended,
        ),
        (
            "netkey_entries_expired_total",
            "Key entries that reached their not-after instant.",
            m.entries_expired,
        ),
        (
            "netkey_cameras_contested_total",
            "CameraContested warnings.",
            m.contested,
        ),
    ] {
        o.family(name, "counter", help);
        o.sample(name, &[], v);
    }
    o.family(
        "netkey_refusals_total",
        "counter",
        "Refusals since the daemon started, by reason (wire code).",
    );
    for (reason, n) in &m.refusals {
        o.sample("netkey_refusals_total", &[("reason", reason)], n);
    }
    let h = "netkey_heartbeat_latency_seconds";
    o.family(
        h,
        "histogram",
        "From a heartbeat reaching the core task to its answer being released (queue, apply, commit).",
    );
    for (bound, n) in LATENCY_BUCKETS.iter().zip(&m.latency_cumulative) {
        o.sample(&format!("{h}_bucket"), &[("le", &bound.to_string())], n);
    }
    o.sample(&format!("{h}_bucket"), &[("le", "+Inf")], m.latency_count);
    o.sample(&format!("{h}_sum"), &[], m.latency_sum_secs);
    o.sample(&format!("{h}_count"), &[], m.latency_count);
    o.0
}
