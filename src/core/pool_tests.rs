//! Scenario tests of pools: create, move seats, delete (seeds 000 and 001), one rule each.

use super::test_support::{self, entry, key_document, T0};
use super::*;
use crate::key::Policy;

const YEAR: u64 = 365 * time::DAY;

/// Key K: 4 cameras of SO-OLD (expire in 30 days), 6 of SO-NEW (a year), 2 lpr.
fn key(id: &str) -> KeyDocument {
    key_document(
        id,
        vec![
            entry("camera", 4, T0.plus(30 * time::DAY), "SO-OLD"),
            entry("camera", 6, T0.plus(YEAR), "SO-NEW"),
            entry("lpr", 2, T0.plus(YEAR), "SO-NEW"),
        ],
        Policy {
            heartbeat_interval_secs: 10,
            offline_grace_secs: 60,
            ..Policy::default()
        },
    )
}

fn core() -> Core {
    let mut c = Core::new();
    c.install_key(T0, key("K"), false).unwrap();
    c
}

fn seats(list: &[&str]) -> Vec<SeatRequest> {
    list.iter()
        .map(|s| SeatRequest::parse(s).unwrap())
        .collect()
}

fn pool(name: &str) -> PoolId {
    PoolId::new("K", name)
}

fn enrol(c: &mut Core, pool: &PoolId, id: &str) {
    test_support::enrol(c, T0, pool, id);
}

fn grant(c: &mut Core, server: &str, cams: &[&str]) {
    let items: Vec<CheckoutItem> = cams.iter().map(|x| CheckoutItem::camera(x)).collect();
    let a = c.checkout(T0, server, None, &items, false).unwrap();
    for (camera, o) in a.outcomes {
        assert!(
            matches!(o, CameraOutcome::Granted { .. }),
            "{camera}: {o:?}"
        );
    }
}

/// (order, seats) the pool holds, as its view lists them.
fn held(c: &Core, p: &PoolId) -> Vec<(String, String, u32)> {
    let v = c.pool_views(T0);
    let view = v.iter().find(|v| v.pool == p.to_string()).unwrap();
    view.entries
        .iter()
        .map(|e| (e.feature.clone(), e.order.clone(), e.seats))
        .collect()
}

fn total_of_key(c: &Core, feature: &str) -> u64 {
    c.pool_views(T0)
        .iter()
        .filter(|p| p.key_id == "K")
        .map(|p| c.allocation(&PoolId::new("K", &p.name), feature, T0))
        .sum()
}

#[test]
fn seat_requests_parse_with_and_without_an_order() {
    assert_eq!(
        SeatRequest::parse("camera=4").unwrap(),
        SeatRequest {
            feature: "camera".into(),
            count: 4,
            order: None
        }
    );
    let r = SeatRequest::parse("lpr=2@SO-1001").unwrap();
    assert_eq!(r.order.as_deref(), Some("SO-1001"));
    assert_eq!(r.to_string(), "lpr=2@SO-1001");
    for bad in ["camera", "=4", "camera=four", "camera=-1", "camera=2@"] {
        assert!(SeatRequest::parse(bad).is_err(), "{bad} parsed");
    }
}

#[test]
fn create_takes_unused_seats_from_default_latest_expiry_first() {
    let mut c = core();
    c.drain_events();
    let out = c
        .create_pool(T0, &pool("West"), &seats(&["camera=7", "lpr=1"]))
        .unwrap();
    // Six from SO-NEW (expires last), then one from SO-OLD.
    let moved: Vec<(String, u32)> = out
        .moved
        .iter()
        .map(|m| (m.order.clone(), m.count))
        .collect();
    assert_eq!(
        moved,
        [
            ("SO-OLD".into(), 1),
            ("SO-NEW".into(), 6),
            ("SO-NEW".into(), 1)
        ]
    );
    assert_eq!(c.allocation(&pool("West"), "camera", T0), 7);
    assert_eq!(c.allocation(&pool("Default"), "camera", T0), 3);
    assert_eq!(c.allocation(&pool("West"), "lpr", T0), 1);
    assert_eq!(total_of_key(&c, "camera"), 10);
    let events = c.drain_events();
    assert!(matches!(&events[0], Event::PoolCreated { pool: p } if *p == pool("West")));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::SeatsMoved { .. }))
            .count(),
        3
    );
    c.check_invariants(T0).unwrap();
}

#[test]
fn create_with_an_order_takes_from_that_sales_order_only() {
    let mut c = core();
    c.create_pool(T0, &pool("Old"), &seats(&["camera=3@SO-OLD"]))
        .unwrap();
    assert_eq!(
        held(&c, &pool("Old")),
        [("camera".into(), "SO-OLD".into(), 3)]
    );
    // SO-OLD has one left in Default: asking two of it is refused, naming the numbers.
    let r = c
        .create_pool(T0, &pool("More"), &seats(&["camera=2@SO-OLD"]))
        .unwrap_err();
    assert_eq!(
        r.to_string(),
        "bad request: pool K/Default holds 1 unexpired camera seats of sales order SO-OLD; 2 asked"
    );
    let r = c
        .create_pool(T0, &pool("More"), &seats(&["camera=1@SO-NONE"]))
        .unwrap_err();
    assert!(
        r.to_string().contains("no camera entry of sales order"),
        "{r}"
    );
    // Refusals made nothing.
    assert!(c.resolve_pool("More").is_err());
    c.check_invariants(T0).unwrap();
}

#[test]
fn only_unused_seats_move_and_the_refusal_gives_the_numbers() {
    let mut c = core();
    enrol(&mut c, &pool("Default"), "A");
    grant(
        &mut c,
        "A",
        &["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"],
    );
    let r = c
        .create_pool(T0, &pool("West"), &seats(&["camera=3"]))
        .unwrap_err();
    assert_eq!(
        r,
        Refusal::SeatsInUse {
            pool: "K/Default".into(),
            feature: "camera".into(),
            asked: 3,
            in_use: 8,
            total: 10
        }
    );
    assert_eq!(
        r.to_string(),
        "only unused seats move: pool K/Default has 2 unused camera seats (8 in use of 10); 3 asked"
    );
    assert!(
        c.resolve_pool("West").is_err(),
        "a refused create made a pool"
    );
    // Two do move.
    c.create_pool(T0, &pool("West"), &seats(&["camera=2"]))
        .unwrap();
    assert_eq!(c.allocation(&pool("Default"), "camera", T0), 8);
    c.check_invariants(T0).unwrap();
}

#[test]
fn a_pool_with_no_seats_can_be_made_and_filled_later() {
    let mut c = core();
    c.create_pool(T0, &pool("Empty"), &[]).unwrap();
    assert_eq!(c.allocation(&pool("Empty"), "camera", T0), 0);
    let out = c
        .move_seats(T0, &pool("Default"), &pool("Empty"), &seats(&["lpr=2"]))
        .unwrap();
    assert_eq!(out.moved.len(), 1);
    assert_eq!(c.allocation(&pool("Empty"), "lpr", T0), 2);
    assert_eq!(c.allocation(&pool("Default"), "lpr", T0), 0);
}

#[test]
fn bad_pool_names_and_duplicates_are_refused() {
    let mut c = core();
    for name in ["", " West", "a/b", "Default", &"x".repeat(65)] {
        assert!(
            c.create_pool(T0, &pool(name), &[]).is_err(),
            "{name:?} accepted"
        );
    }
    assert!(matches!(
        c.create_pool(T0, &PoolId::new("NOKEY", "West"), &[]),
        Err(Refusal::UnknownKey { .. })
    ));
    let r = c.create_pool(T0, &pool("West"), &seats(&["face=1"]));
    assert!(r.unwrap_err().to_string().contains("no feature \"face\""));
}

#[test]
fn move_between_pools_of_one_key_and_never_across_keys() {
    let mut c = core();
    c.install_key(T0, key("L"), false).unwrap();
    c.create_pool(T0, &pool("West"), &seats(&["camera=4"]))
        .unwrap();
    c.create_pool(T0, &pool("East"), &[]).unwrap();
    c.move_seats(T0, &pool("West"), &pool("East"), &seats(&["camera=3"]))
        .unwrap();
    assert_eq!(c.allocation(&pool("West"), "camera", T0), 1);
    assert_eq!(c.allocation(&pool("East"), "camera", T0), 3);
    let r = c.move_seats(
        T0,
        &pool("East"),
        &PoolId::default_of("L"),
        &seats(&["camera=1"]),
    );
    assert!(
        r.unwrap_err().to_string().contains("different keys"),
        "seats left their key"
    );
    // A server in East uses 2 of its 3: only 1 moves back.
    enrol(&mut c, &pool("East"), "A");
    grant(&mut c, "A", &["c1", "c2"]);
    let r = c
        .move_seats(T0, &pool("East"), &pool("Default"), &seats(&["camera=2"]))
        .unwrap_err();
    assert!(matches!(
        r,
        Refusal::SeatsInUse {
            asked: 2,
            in_use: 2,
            total: 3,
            ..
        }
    ));
    c.move_seats(T0, &pool("East"), &pool("Default"), &seats(&["camera=1"]))
        .unwrap();
    assert_eq!(total_of_key(&c, "camera"), 10);
    c.check_invariants(T0).unwrap();
}

#[test]
fn delete_is_refused_while_servers_are_enrolled_then_returns_seats_to_default() {
    let mut c = core();
    c.create_pool(T0, &pool("West"), &seats(&["camera=4@SO-OLD", "lpr=1"]))
        .unwrap();
    enrol(&mut c, &pool("West"), "A");
    c.create_code(T0, &pool("West"), "12345678").unwrap();
    let r = c.delete_pool(T0, &pool("West")).unwrap_err();
    assert_eq!(
        r.to_string(),
        "pool K/West still has 1 video server enrolled; move or kick it first"
    );
    assert!(matches!(
        c.delete_pool(T0, &pool("Default")),
        Err(Refusal::BadRequest { .. })
    ));
    c.move_server(T0, "A", &pool("Default")).unwrap();
    let out = c.delete_pool(T0, &pool("West")).unwrap();
    assert_eq!(out.to, pool("Default"));
    assert_eq!(c.allocation(&pool("Default"), "camera", T0), 10);
    assert_eq!(c.allocation(&pool("Default"), "lpr", T0), 2);
    assert!(c.resolve_pool("West").is_err());
    // Its code went with it.
    let r = c.enrol(
        T0,
        EnrolRequest {
            code: "12345678".into(),
            name: "B".into(),
            version: "1.0".into(),
            server_id: "B".into(),
            credential: vec![1],
            existing: None,
        },
    );
    assert_eq!(r.unwrap_err(), Refusal::CodeInvalid);
    c.check_invariants(T0).unwrap();
}

#[test]
fn a_pool_still_counting_a_revoking_seat_is_deleted_only_once_it_ends() {
    let mut c = core();
    c.create_pool(T0, &pool("West"), &seats(&["camera=2"]))
        .unwrap();
    enrol(&mut c, &pool("West"), "A");
    grant(&mut c, "A", &["c1"]);
    // A is silent: a free leaves c1 counted as revoking in West.
    c.free(T0, None, "c1", false).unwrap();
    c.move_server(T0, "A", &pool("Default")).unwrap();
    let r = c.delete_pool(T0, &pool("West")).unwrap_err();
    assert_eq!(
        r,
        Refusal::PoolInUse {
            pool: "K/West".into(),
            servers: 0,
            revoking: 1
        }
    );
    assert!(
        r.to_string()
            .contains("1 revoking seat of a server that left it"),
        "{r}"
    );
    c.acknowledge(T0, "A", "c1", 1).unwrap();
    c.delete_pool(T0, &pool("West")).unwrap();
    assert_eq!(c.allocation(&pool("Default"), "camera", T0), 10);
    c.check_invariants(T0).unwrap();
}

#[test]
fn an_entry_expiring_shrinks_exactly_the_pools_holding_it() {
    let mut c = core();
    c.create_pool(T0, &pool("Old"), &seats(&["camera=2@SO-OLD"]))
        .unwrap();
    c.create_pool(T0, &pool("New"), &seats(&["camera=2@SO-NEW"]))
        .unwrap();
    enrol(&mut c, &pool("Old"), "A");
    enrol(&mut c, &pool("New"), "B");
    grant(&mut c, "A", &["a1", "a2"]);
    grant(&mut c, "B", &["b1", "b2"]);
    c.drain_events();
    // Keep both servers' reservations alive past the expiry.
    let later = T0.plus(30 * time::DAY);
    for s in ["A", "B"] {
        c.apply_persisted_renewals(&[(s.to_string(), later.minus(1000))]);
    }
    c.advance(later);
    let shrunk: Vec<PoolId> = c
        .drain_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::AllocationShrunk { pool, .. } => Some(pool),
            _ => None,
        })
        .collect();
    assert_eq!(shrunk, [pool("Old")]);
    assert_eq!(c.allocation(&pool("Old"), "camera", later), 0);
    assert_eq!(c.allocation(&pool("New"), "camera", later), 2);
    assert_eq!(c.usage(&pool("New"), "camera").held, 2);
    c.check_invariants(later).unwrap();
}

#[test]
fn pool_commands_replay_to_the_same_state() {
    let mut live = core();
    let commands = vec![
        Command::CreatePool {
            pool: pool("West"),
            seats: seats(&["camera=5", "lpr=1@SO-NEW"]),
        },
        Command::CreatePool {
            pool: pool("East"),
            seats: vec![],
        },
        Command::MoveSeats {
            from: pool("West"),
            to: pool("East"),
            seats: seats(&["camera=2"]),
        },
        Command::DeletePool { pool: pool("West") },
    ];
    let mut replayed = core();
    for cmd in &commands {
        let out = live.apply(T0, cmd.clone());
        assert!(matches!(out, Outcome::PoolChanged(_)), "{cmd:?}: {out:?}");
        replayed.apply(T0, cmd.clone());
    }
    assert_eq!(live.pool_views(T0), replayed.pool_views(T0));
    assert_eq!(live.allocation(&pool("East"), "camera", T0), 2);
    assert_eq!(live.allocation(&pool("Default"), "camera", T0), 8);
    assert_eq!(live.allocation(&pool("Default"), "lpr", T0), 2);
}

#[test]
fn server_states_tell_silent_from_reservation_ending() {
    let mut c = core();
    enrol(&mut c, &pool("Default"), "A");
    grant(&mut c, "A", &["c1"]);
    let state = |c: &Core, now| {
        c.server_views(now)
            .into_iter()
            .find(|v| v.server_id == "A")
            .unwrap()
            .state
    };
    c.session_opened(T0, "A");
    assert_eq!(state(&c, T0), "live");
    c.session_closed(T0, "A");
    assert_eq!(state(&c, T0), "silent");
    // Past its offline grace (60 s) the server has stopped; its seat is still reserved
    // for one more heartbeat interval (10 s).
    assert_eq!(state(&c, T0.plus(60_000)), "reservation ending");
    assert_eq!(c.reservation_end("A"), Some(T0.plus(70_000)));
}

#[test]
fn pool_commands_round_trip_through_the_log_encoding() {
    for cmd in [
        Command::CreatePool {
            pool: pool("West"),
            seats: seats(&["camera=5", "lpr=1@SO-NEW"]),
        },
        Command::MoveSeats {
            from: pool("West"),
            to: pool("Default"),
            seats: seats(&["camera=2"]),
        },
        Command::DeletePool { pool: pool("West") },
    ] {
        let bytes = postcard::to_allocvec(&cmd).unwrap();
        assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), cmd);
    }
    // In JSON (the admin API) a seat request may leave `order` out.
    let r: SeatRequest = serde_json::from_str(r#"{"feature":"camera","count":2}"#).unwrap();
    assert_eq!(r.order, None);
}
