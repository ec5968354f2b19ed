//! Scenario tests of the key rules in the core: entries expiring among live ones (warned,
//! then shrinking newest first), the overdraft and its allowance, licence classes and
//! device versions, revisions, a key's return, a refused key, the clock, and key kinds.
//! Each checks the text a person would read.

use super::test_support::{self, entry, key_document, T0};
use super::time::{DAY, HOUR, MINUTE};
use super::*;
use crate::key::{Entry, KeyKind, Policy};

/// Heartbeat 10 s; a long grace, so servers stay reserved while days pass.
fn policy() -> Policy {
    Policy {
        heartbeat_interval_secs: 10,
        offline_grace_secs: 60 * DAY / 1000,
        ..Policy::default()
    }
}

fn key(id: &str, entries: Vec<Entry>, policy: Policy) -> KeyDocument {
    key_document(id, entries, policy)
}

fn enrol(c: &mut Core, now: Timestamp, key: &str, id: &str) {
    test_support::enrol(c, now, &PoolId::default_of(key), id);
}

/// Key K (4 cameras of SO-1 for a year) with server A enrolled in its Default pool.
fn four_cameras_with_server_a() -> Core {
    let mut c = Core::new();
    let k = key(
        "K",
        vec![entry("camera", 4, T0.plus(365 * DAY), "SO-1")],
        policy(),
    );
    c.install_key(T0, k, false).unwrap();
    enrol(&mut c, T0, "K", "A");
    c
}

fn one(c: &mut Core, now: Timestamp, server: &str, item: CheckoutItem) -> CameraOutcome {
    let a = c.checkout(now, server, None, &[item], false).unwrap();
    a.outcomes[0].1.clone()
}

fn cam(name: &str) -> CheckoutItem {
    CheckoutItem::camera(name)
}

fn refused_text(o: &CameraOutcome) -> String {
    match o {
        CameraOutcome::Refused(r) => r.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn is_granted(o: &CameraOutcome) -> bool {
    matches!(o, CameraOutcome::Granted { .. })
}

fn revoked(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::RevocationIssued { camera, .. } => Some(camera.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_expired_entry_among_live_ones_is_warned_then_shrinks_newest_first() {
    let soon = T0.plus(10 * DAY);
    let k = key(
        "K",
        vec![
            entry("camera", 2, T0.plus(365 * DAY), "SO-LONG"),
            entry("camera", 2, soon, "SO-SHORT"),
        ],
        policy(),
    );
    let mut c = Core::new();
    c.install_key(T0, k, false).unwrap();
    // Installed 10 days ahead of the end: the 30-day stage is warned at once.
    let warned: Vec<u32> = c
        .drain_events()
        .iter()
        .filter_map(|e| match e {
            Event::EntryExpiring { order, days, .. } if order == "SO-SHORT" => Some(*days),
            _ => None,
        })
        .collect();
    assert_eq!(warned, vec![30]);
    enrol(&mut c, T0, "K", "A");
    for (i, name) in ["c1", "c2", "c3", "c4"].iter().enumerate() {
        assert!(is_granted(&one(
            &mut c,
            T0.plus(i as u64 * 1000),
            "A",
            cam(name)
        )));
    }
    let hb = c.heartbeat(T0.plus(5000), "A", &[0; 32]).unwrap();
    assert_eq!(hb.expiring.len(), 1);
    assert_eq!(hb.expiring[0].order, "SO-SHORT");
    assert_eq!(hb.expiring[0].not_after, soon);
    let view = &c.key_views(T0.plus(5000))[0];
    let states: Vec<&str> = view.entries.iter().map(|e| e.state.as_str()).collect();
    assert_eq!(states, vec!["valid", "expiring"]);

    // 7 and 1 days ahead.
    c.drain_events();
    c.advance(soon.minus(7 * DAY));
    c.advance(soon.minus(DAY));
    let stages: Vec<u32> = c
        .drain_events()
        .iter()
        .filter_map(|e| match e {
            Event::EntryExpiring { days, .. } => Some(*days),
            _ => None,
        })
        .collect();
    assert_eq!(stages, vec![7, 1]);

    // It ends: the two newest leases are revoked, the older two stay.
    c.heartbeat(soon.minus(1000), "A", &[0; 32]).unwrap();
    c.advance(soon);
    let events = c.drain_events();
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::EntryExpired { order, .. } if order == "SO-SHORT")));
    assert_eq!(revoked(&events), vec!["c4", "c3"]);
    assert_eq!(c.allocation(&PoolId::default_of("K"), "camera", soon), 2);
    let text = refused_text(&one(&mut c, soon, "A", cam("c5")));
    assert_eq!(
        text,
        "camera use (4) exceeds the allocation (2) since it shrank; nothing is granted until use is back under"
    );
    for (camera, epoch) in [("c3", 1), ("c4", 1)] {
        assert!(c.acknowledge(soon, "A", camera, epoch).unwrap());
    }
    let text = refused_text(&one(&mut c, soon, "A", cam("c5")));
    assert_eq!(
        text,
        "no free camera licence: 2 in use of 2 total in this pool"
    );
    let view = &c.key_views(soon)[0];
    assert_eq!(view.entries[1].state, "expired");
    c.check_invariants(soon).unwrap();
}

#[test]
fn an_expired_key_is_refused_at_install_and_at_checkout() {
    let mut c = Core::new();
    let old = key("OLD", vec![entry("camera", 1, T0, "SO-OLD")], policy());
    let err = c.install_key(T0, old, false).unwrap_err();
    assert_eq!(err.to_string(), "key OLD has expired");
    let k = key(
        "K",
        vec![entry("camera", 1, T0.plus(DAY), "SO-1")],
        policy(),
    );
    c.install_key(T0, k, false).unwrap();
    enrol(&mut c, T0, "K", "A");
    let text = refused_text(&one(&mut c, T0.plus(DAY), "A", cam("c1")));
    assert_eq!(text, "key K has expired");
}

fn overdraft_key(seats: u32, hours: u32) -> KeyDocument {
    key(
        "K",
        vec![
            entry("camera", 2, T0.plus(365 * DAY), "SO-CAM"),
            entry("lpr", 1, T0.plus(365 * DAY), "SO-LPR"),
        ],
        Policy {
            overdraft_seats: seats,
            overdraft_hours: hours,
            ..policy()
        },
    )
}

#[test]
fn overdraft_seats_are_granted_flagged_and_shared_by_features() {
    let mut c = Core::new();
    c.install_key(T0, overdraft_key(1, 1), false).unwrap();
    enrol(&mut c, T0, "K", "A");
    assert!(is_granted(&one(&mut c, T0, "A", cam("c1"))));
    assert!(is_granted(&one(&mut c, T0, "A", cam("c2"))));
    c.drain_events();
    assert!(is_granted(&one(&mut c, T0.plus(1000), "A", cam("c3"))));
    assert!(c
        .drain_events()
        .iter()
        .any(|e| matches!(e, Event::OverdraftStarted { seats: 1, .. })));
    let flagged: Vec<(String, bool)> = c
        .camera_views(T0.plus(1000))
        .into_iter()
        .map(|v| (v.camera_id, v.overdraft))
        .collect();
    assert_eq!(
        flagged,
        vec![
            ("c1".into(), false),
            ("c2".into(), false),
            ("c3".into(), true)
        ]
    );
    let view = &c.key_views(T0.plus(1000))[0];
    assert_eq!(view.overdraft.in_use, 1);
    assert_eq!(view.seats[0].overdraft, 1);
    // The one extra seat is taken: no more camera.
    let text = refused_text(&one(&mut c, T0.plus(2000), "A", cam("c4")));
    assert_eq!(
        text,
        "no free camera licence: 3 in use of 2 total in this pool"
    );
    // Back within the allocation: the period ends and is counted.
    c.release(T0.plus(10 * MINUTE), "A", &["c3".into()])
        .unwrap();
    assert!(c
        .drain_events()
        .iter()
        .any(|e| matches!(e, Event::OverdraftEnded { minutes: 9, .. })));
    // The same one seat serves any feature: lpr over its allocation takes it, and then
    // no camera can.
    let lpr = |name: &str| CheckoutItem {
        modules: vec!["lpr".into()],
        ..cam(name)
    };
    assert!(is_granted(&one(
        &mut c,
        T0.plus(10 * MINUTE),
        "A",
        lpr("c1")
    )));
    assert!(is_granted(&one(
        &mut c,
        T0.plus(10 * MINUTE),
        "A",
        lpr("c2")
    )));
    assert_eq!(c.key_views(T0.plus(10 * MINUTE))[0].overdraft.in_use, 1);
    let text = refused_text(&one(&mut c, T0.plus(10 * MINUTE), "A", cam("c5")));
    assert_eq!(
        text,
        "no free camera licence: 2 in use of 2 total in this pool"
    );
    c.release(T0.plus(20 * MINUTE), "A", &["c2".into()])
        .unwrap();
    assert_eq!(
        c.key_views(T0.plus(20 * MINUTE))[0].overdraft.minutes_used,
        19
    );
    c.check_invariants(T0.plus(20 * MINUTE)).unwrap();
}

#[test]
fn a_spent_overdraft_allowance_revokes_overdraft_leases_and_refuses_more() {
    let mut c = Core::new();
    c.install_key(T0, overdraft_key(2, 1), false).unwrap();
    enrol(&mut c, T0, "K", "A");
    for (i, name) in ["c1", "c2", "c3", "c4"].iter().enumerate() {
        assert!(is_granted(&one(&mut c, T0.plus(i as u64), "A", cam(name))));
    }
    assert_eq!(c.next_deadline(), T0.plus(2 + HOUR));
    c.drain_events();
    // One hour over the allocation: the allowance is spent.
    c.advance(T0.plus(2 + HOUR));
    let events = c.drain_events();
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::OverdraftSpent { hours: 1, .. })));
    assert_eq!(revoked(&events), vec!["c4", "c3"]);
    for camera in ["c3", "c4"] {
        c.acknowledge(T0.plus(HOUR + 10), "A", camera, 1).unwrap();
    }
    let text = refused_text(&one(&mut c, T0.plus(HOUR + 20), "A", cam("c5")));
    assert_eq!(
        text,
        "no free camera licence: 2 in use of 2 total in this pool, and the key's overdraft allowance (1 hours per 30 days) is spent"
    );
    let view = &c.key_views(T0.plus(HOUR + 20))[0];
    assert!(view.overdraft.spent);
    // Within the allocation all goes on; 30 days later the hour is free again.
    c.release(T0.plus(HOUR + 30), "A", &["c2".into()]).unwrap();
    assert!(is_granted(&one(&mut c, T0.plus(HOUR + 40), "A", cam("c5"))));
    let later = T0.plus(31 * DAY);
    assert!(is_granted(&one(&mut c, later, "A", cam("c6"))));
    assert!(!c.key_views(later)[0].overdraft.spent);
    c.check_invariants(later).unwrap();
}

#[test]
fn classes_legacy_devices_and_minimum_versions() {
    let p = |entitled: bool| Policy {
        min_device_version: Some("8.0".into()),
        current_device_version: Some("9.0".into()),
        legacy_entitlement: entitled,
        classes: [(
            "encoder-4ch".to_string(),
            [("camera".to_string(), 4)].into_iter().collect(),
        )]
        .into_iter()
        .collect(),
        ..policy()
    };
    let entries = || vec![entry("camera", 4, T0.plus(365 * DAY), "SO-1")];
    let mut c = Core::new();
    c.install_key(T0, key("YES", entries(), p(true)), false)
        .unwrap();
    c.install_key(T0, key("NO", entries(), p(false)), false)
        .unwrap();
    enrol(&mut c, T0, "YES", "A");
    enrol(&mut c, T0, "NO", "B");
    let dev = |name: &str, v: &str| CheckoutItem {
        device_version: Some(v.into()),
        ..cam(name)
    };
    // With the entitlement a v8 device is a free, perpetual legacy licence.
    match one(&mut c, T0, "A", dev("old", "8.4.1")) {
        CameraOutcome::Granted {
            legacy, features, ..
        } => {
            assert!(legacy);
            assert!(features.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let encoder = CheckoutItem {
        class: Some("encoder-4ch".into()),
        ..dev("enc", "9.1")
    };
    assert!(is_granted(&one(&mut c, T0, "A", encoder)));
    assert_eq!(c.usage(&PoolId::default_of("YES"), "camera").counted(), 4);
    let v = c.camera_views(T0);
    assert!(v.iter().any(|v| v.camera_id == "old" && v.legacy));
    // Without it, refused; below the minimum, refused on either key.
    let text = refused_text(&one(&mut c, T0, "B", dev("old", "8.4.1")));
    assert_eq!(
        text,
        "a legacy device, and this key does not grant legacy licences"
    );
    let text = refused_text(&one(&mut c, T0, "A", dev("older", "7.9")));
    assert_eq!(text, "the device version is below the minimum 8.0");
    assert!(is_granted(&one(&mut c, T0, "B", dev("newer", "9.0"))));
}

#[test]
fn a_lower_revision_is_refused_and_a_higher_one_keeps_pools_and_leases() {
    let mut c = Core::new();
    let mut k = key(
        "K",
        vec![entry("camera", 2, T0.plus(365 * DAY), "SO-1")],
        policy(),
    );
    k.revision = 2;
    c.install_key(T0, k.clone(), false).unwrap();
    enrol(&mut c, T0, "K", "A");
    assert!(is_granted(&one(&mut c, T0, "A", cam("c1"))));
    let mut lower = k.clone();
    lower.revision = 1;
    let err = c.install_key(T0, lower, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad request: key K revision 2 is installed; revision 1 does not replace it"
    );
    let mut higher = k;
    higher.revision = 3;
    higher.entries[0].count = 5;
    c.install_key(T0.plus(1000), higher, false).unwrap();
    assert_eq!(c.holder("K", "c1"), Some("A"));
    assert_eq!(c.allocation(&PoolId::default_of("K"), "camera", T0), 5);
    assert_eq!(c.key_views(T0)[0].revision, 3);
}

#[test]
fn a_clock_rollback_blocks_new_checkouts_and_lets_renewals_go_on() {
    let mut c = four_cameras_with_server_a();
    enrol(&mut c, T0, "K", "B");
    let epoch = match one(&mut c, T0, "A", cam("c1")) {
        CameraOutcome::Granted { epoch, .. } => epoch,
        other => panic!("{other:?}"),
    };
    let mark = T0.plus(HOUR);
    c.set_clock_rollback(T0.plus(1000), Some(mark));
    let renewal = CheckoutItem {
        epoch: Some(epoch),
        ..cam("c1")
    };
    assert!(matches!(
        one(&mut c, T0.plus(2000), "A", renewal),
        CameraOutcome::Granted { renewed: true, .. }
    ));
    c.heartbeat(T0.plus(2000), "A", &[0; 32]).unwrap();
    let text = refused_text(&one(&mut c, T0.plus(2000), "A", cam("c2")));
    assert_eq!(
        text,
        "the daemon's wall clock is behind its high-water mark 2027-01-15T09:00:00Z; new checkouts are refused until it passes the mark or a vendor's reset token is installed (renewals go on)"
    );
    // A move is a new checkout too.
    let text = refused_text(&one(&mut c, T0.plus(2000), "B", cam("c1")));
    assert!(text.contains("high-water mark"), "{text}");
    c.set_clock_rollback(T0.plus(3000), None);
    assert!(is_granted(&one(&mut c, T0.plus(3000), "A", cam("c2"))));
}

#[test]
fn time_set_back_by_a_reset_counts_an_entry_expired_by_the_old_reckoning_again() {
    let mut c = Core::new();
    let k = key(
        "K",
        vec![
            entry("camera", 1, T0.plus(DAY), "SO-SHORT"),
            entry("camera", 1, T0.plus(365 * DAY), "SO-LONG"),
        ],
        policy(),
    );
    c.install_key(T0, k, false).unwrap();
    let pool = PoolId::default_of("K");
    c.advance(T0.plus(2 * DAY));
    assert_eq!(c.allocation(&pool, "camera", T0.plus(2 * DAY)), 1);
    c.time_rebased(T0.plus(HOUR));
    assert_eq!(c.allocation(&pool, "camera", T0.plus(HOUR)), 2);
    enrol(&mut c, T0.plus(HOUR), "K", "A");
    assert!(is_granted(&one(&mut c, T0.plus(HOUR), "A", cam("c1"))));
    assert!(is_granted(&one(&mut c, T0.plus(HOUR + 1), "A", cam("c2"))));
    c.drain_events();
    // It expires again, and shrinks again.
    c.advance(T0.plus(DAY));
    assert_eq!(revoked(&c.drain_events()), vec!["c2"]);
}

#[test]
fn a_returned_key_revokes_its_leases_then_goes_with_its_pools_and_servers() {
    let mut c = four_cameras_with_server_a();
    c.session_opened(T0, "A");
    assert!(is_granted(&one(&mut c, T0, "A", cam("c1"))));
    c.drain_events();
    assert_eq!(c.deactivate_key(T0.plus(1000), "K").unwrap(), 1);
    assert_eq!(revoked(&c.drain_events()), vec!["c1"]);
    assert!(c.key_has_live_holders("K"));
    let text = refused_text(&one(&mut c, T0.plus(1000), "A", cam("c2")));
    assert_eq!(
        text,
        "key K is not served by this daemon: it is being returned (`netkeyctl key return`)"
    );
    let err = c.return_key(T0.plus(1000), "K", false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad request: 1 lease of key K remains (revoking until the video servers acknowledge or their reservations end); return it when none remains, or with --force"
    );
    assert!(c.acknowledge(T0.plus(2000), "A", "c1", 1).unwrap());
    let r = c.return_key(T0.plus(2000), "K", false).unwrap();
    assert!(!r.forced);
    assert!(!c.has_key("K"));
    assert!(c.pool_views(T0).is_empty());
    assert_eq!(c.server_count(), 0);
    assert!(c
        .drain_events()
        .iter()
        .any(|e| matches!(e, Event::KeyReturned { forced: false, .. })));
}

#[test]
fn a_forced_return_drops_what_is_left_as_an_audited_overlap() {
    let mut c = four_cameras_with_server_a();
    assert!(is_granted(&one(&mut c, T0, "A", cam("c1"))));
    c.deactivate_key(T0, "K").unwrap();
    let r = c.return_key(T0, "K", true).unwrap();
    assert_eq!((r.forced, r.dropped), (true, 1));
    let events = c.drain_events();
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::ForcedOverlap { camera, .. } if camera == "c1")));
    c.check_invariants(T0).unwrap();
}

#[test]
fn a_key_the_daemon_refuses_renews_nothing() {
    let mut c = four_cameras_with_server_a();
    assert!(is_granted(&one(&mut c, T0, "A", cam("c1"))));
    let reason = "this host is not the one the key was activated for";
    c.key_checked(
        T0,
        "K",
        "NOT bound to this host",
        Some(reason.into()),
        None,
        None,
    )
    .unwrap();
    let text = refused_text(&one(&mut c, T0, "A", cam("c1")));
    assert_eq!(
        text,
        format!("key K is not served by this daemon: {reason}")
    );
    let err = c.heartbeat(T0, "A", &[0; 32]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("key K is not served by this daemon: {reason}")
    );
    assert!(c.sync(T0, "A", &[]).is_err());
    assert_eq!(c.key_views(T0)[0].state, "refused");
    c.key_checked(T0, "K", "bound to this host", None, None, None)
        .unwrap();
    assert!(c.heartbeat(T0, "A", &[0; 32]).is_ok());
}

#[test]
fn a_server_on_a_local_key_cannot_move_to_a_network_key() {
    let mut c = Core::new();
    let mut local = key(
        "L",
        vec![entry("camera", 4, T0.plus(365 * DAY), "SO-1")],
        policy(),
    );
    local.kind = KeyKind::Local;
    c.install_key(T0, local, false).unwrap();
    let net = key(
        "N",
        vec![entry("camera", 4, T0.plus(365 * DAY), "SO-2")],
        policy(),
    );
    c.install_key(T0, net, false).unwrap();
    enrol(&mut c, T0, "L", "A");
    let err = c
        .move_server(T0, "A", &PoolId::default_of("N"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad request: server A is on key L (local); it cannot move to key N (network): a video server uses either a local or a network key"
    );
}
