//! Scenario tests of the core, one rule each, with time moved by hand.

use super::test_support::{enrol, entry, key_document, T0};
use super::*;
use crate::key::{Entry, Policy};

const INTERVAL: u64 = 10_000;
const GRACE: u64 = 60_000;

fn key(id: &str, cameras: u32, policy: Policy) -> KeyDocument {
    let year = T0.plus(365 * time::DAY);
    key_document(
        id,
        vec![
            entry("camera", cameras, year, "SO-1"),
            entry("lpr", 1, year, "SO-1"),
        ],
        policy,
    )
}

fn policy() -> Policy {
    Policy {
        heartbeat_interval_secs: INTERVAL / 1000,
        offline_grace_secs: GRACE / 1000,
        ..Policy::default()
    }
}

fn core_with(keys: &[KeyDocument]) -> Core {
    let mut c = Core::new();
    for k in keys {
        c.install_key(T0, k.clone(), false).unwrap();
    }
    c
}

fn cams(names: &[&str]) -> Vec<CheckoutItem> {
    names.iter().map(|c| CheckoutItem::camera(c)).collect()
}

fn granted(o: &CameraOutcome) -> u64 {
    match o {
        CameraOutcome::Granted { epoch, .. } => *epoch,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn refusal(o: &CameraOutcome) -> Refusal {
    match o {
        CameraOutcome::Refused(r) => r.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn demo_pool() -> PoolId {
    PoolId::default_of("K")
}

/// Two servers A and B on key K with `n` camera seats.
fn two_servers(n: u32, p: Policy) -> Core {
    let mut c = core_with(&[key("K", n, p)]);
    enrol(&mut c, T0, &demo_pool(), "A");
    enrol(&mut c, T0, &demo_pool(), "B");
    c
}

#[test]
fn checkout_up_to_the_limit_then_refused_with_numbers() {
    let mut c = two_servers(2, policy());
    let a = c
        .checkout(T0, "A", None, &cams(&["c1", "c2"]), false)
        .unwrap();
    assert!(a
        .outcomes
        .iter()
        .all(|(_, o)| matches!(o, CameraOutcome::Granted { .. })));
    let b = c.checkout(T0, "B", None, &cams(&["c3"]), false).unwrap();
    let r = refusal(&b.outcomes[0].1);
    assert_eq!(
        r,
        Refusal::NoSeats {
            feature: "camera".into(),
            in_use: 2,
            total: 2
        }
    );
    assert_eq!(
        r.to_string(),
        "no free camera licence: 2 in use of 2 total in this pool"
    );
    c.check_invariants(T0).unwrap();
}

#[test]
fn each_camera_is_all_or_nothing_across_features() {
    let mut c = two_servers(4, policy());
    let mut one = CheckoutItem::camera("c1");
    one.modules = vec!["lpr".into()];
    let mut two = CheckoutItem::camera("c2");
    two.modules = vec!["lpr".into()];
    let a = c.checkout(T0, "A", None, &[one, two], false).unwrap();
    granted(&a.outcomes[0].1);
    assert!(
        matches!(refusal(&a.outcomes[1].1), Refusal::NoSeats { feature, .. } if feature == "lpr")
    );
    // c2 took no camera seat either.
    assert_eq!(c.usage(&demo_pool(), "camera").counted(), 1);
}

#[test]
fn reclaim_by_holder_is_idempotent_and_stale_epoch_gets_moved() {
    let mut c = two_servers(2, policy());
    let e1 = granted(
        &c.checkout(T0, "A", None, &cams(&["c1"]), false)
            .unwrap()
            .outcomes[0]
            .1,
    );
    let mut again = CheckoutItem::camera("c1");
    again.epoch = Some(e1);
    let o = &c
        .checkout(T0, "A", None, &[again.clone()], false)
        .unwrap()
        .outcomes[0]
        .1;
    assert!(matches!(o, CameraOutcome::Granted { renewed: true, epoch, .. } if *epoch == e1));
    assert_eq!(c.usage(&demo_pool(), "camera").counted(), 1);
    // A is silent: B moves c1 with the spare seat; A's stale re-claim is refused.
    let e2 = granted(
        &c.checkout(T0, "B", None, &cams(&["c1"]), false)
            .unwrap()
            .outcomes[0]
            .1,
    );
    assert!(e2 > e1);
    let o = &c.checkout(T0, "A", None, &[again], false).unwrap().outcomes[0].1;
    assert_eq!(refusal(o), Refusal::Moved { epoch: e2 });
    c.check_invariants(T0).unwrap();
}

#[test]
fn move_from_silent_holder_needs_a_spare_seat() {
    let mut c = two_servers(1, policy());
    granted(
        &c.checkout(T0, "A", None, &cams(&["c1"]), false)
            .unwrap()
            .outcomes[0]
            .1,
    );
    let o = &c
        .checkout(T0, "B", None, &cams(&["c1"]), false)
        .unwrap()
        .outcomes[0]
        .1;
    assert!(matches!(refusal(o), Refusal::HeldBySilentServer { .. }));
    // Refused changes nothing: A still holds it, no revocation pending.
    assert!(c.holds("A", "c1", 1));
    assert!(c.server_revocations("A").is_empty());
}

#[test]
fn move_from_silent_holder_leaves_a_counted_revoking_lease_until_ack() {
    let mut c = two_servers(2, policy());
    granted(
        &c.checkout(T0, "A", None, &cams(&["c1"]), false)
            .unwrap()
            .outcomes[0]
            .1,
    );
    let e2 = granted(
        &c.checkout(T0, "B", None, &cams(&["c1"]), false)
            .unwrap()
            .outcomes[0]
            .1,
    );
    let u = c.usage(&demo_pool(), "camera");
    assert_eq!((u.held, u.revoking), (1, 1));
    // A comes back: its heartbeat carries the revocation; its ack returns the seat.
    let hb = c
        .heartbeat(T0.plus(1000), "A", &digest::holdings([("c1", 1)]))
        .unwrap();
    assert_eq!(hb.revocations.len(), 1);
    assert_eq!(hb.revocations[0].reason, RevocationReason::Moved);
    assert!(c.acknowledge(T0.plus(1000), "A", "c1", 1).unwrap());
    let u = c.usage(&demo_pool(), "camera");
    assert_eq!((u.held, u.revoking), (1, 0));
    assert!(c.holds("B", "c1", e2));
    c.check_invariants(T0.plus(1000)).unwrap();
}

#[test]
fn move_from_live_holder_asks_first_and_costs_no_seat_once_acknowledged() {
    let mut c = two_servers(1, policy());
    granted(
        &c.checkout(T0, "A", None, &cams(&["c1"]), false)
            .unwrap()
            .outcomes[0]
            .1,
    );
    c.session_opened(T0, "A");
    let o = &c
        .checkout(T0, "B", None, &cams(&["c1"]), false)
        .unwrap()
        .outcomes[0]
        .1;
    assert!(matches!(o, CameraOutcome::AwaitingHolder { .. }));
    assert!(c
        .drain_events()
        .iter()
        .any(|e| matches!(e, Event::RevocationIssued { server, .. } if server == "A")));
    c.acknowledge(T0, "A", "c1", 1).unwrap();
    let o = &c
        .checkout(T0, "B", None, &cams(&["c1"]), true)
        .unwrap()
        .outcomes[0]
        .1;
    assert_eq!(granted(o), 2);
    assert_eq!(c.usage(&demo_pool(), "camera").counted(), 1);
}

#[test]
fn move_from_live_holder_that_never_answers_is_withdrawn_without_a_spare_seat() {
    let mut c = two_servers(1, policy());
    granted(
        &c.checkout(T0, "A", None, &cams(&["c1"]), false)
            .unwrap()
            .outcomes[0]
            .1,
    );
    c.session_opened(T0, "A");
    c.checkout(T0, "B", None, &cams(&["c1"]), false).unwrap();
    let o = &c
        .checkout(T0.plus(2000), "B", None, &cams(&["c1"]), true)
        .unwrap()
        .outcomes[0]
        .1;
    assert!(matches!(refusal(o), Refusal::HeldBySilentServer { .. }));
    assert!(
        c.server_revocations("A").is_empty(),
        "the move request is withdrawn"
    );
    assert!(c.holds("A", "c1", 1));
}

#[test]
fn silent_server_loses_leases_at_reservation_end_and_stays_enrolled() {
    let mut c = two_servers(2, policy());
    granted(
        &c.checkout(T0, "A", None, &cams(&["c1", "c2"]), false)
            .unwrap()
            .outcomes[0]
            .1,
    );
    let end = c.reservation_end("A").unwrap();
    assert_eq!(end, T0.plus(GRACE + INTERVAL));
    c.advance(end.minus(1));
    assert_eq!(c.usage(&demo_pool(), "camera").counted(), 2);
    c.advance(end);
    assert_eq!(c.usage(&demo_pool(), "camera").counted(), 0);
    assert!(c.enrolment("A").is_ok());
    c.check_invariants(end).unwrap();
}

#[test]
fn client_deadline_falls_before_reservation_end() {
    let mut c = two_servers(2, policy());
    c.checkout(T0, "A", None, &cams(&["c1"]), false).unwrap();
    let mut now = T0;
    for step in [3_000, 9_000, 10_000, 1, 7_777] {
        now = now.plus(step);
        let sent = now.minus(5); // the client sent a little earlier
        let hb = c.heartbeat(now, "A", &c.holdings_digest("A")).unwrap();
        let deadline = sent.plus(hb.valid_for_ms);
        assert!(
            deadline < c.reservation_end("A").unwrap(),
            "deadline {deadline} vs reservation"
        );
        c.renewals_persisted(now);
    }
}

#[test]
fn digest_mismatch_leads_to_a_sync_that_only_releases() {
    let mut c = two_servers(3, policy());
    c.checkout(T0, "A", None, &cams(&["c1", "c2"]), false)
        .unwrap();
    // The client forgot c2 and believes it holds c9, which it never had.
    let claimed = vec![("c1".to_string(), 1), ("c9".to_string(), 1)];
    let hb = c
        .heartbeat(T0, "A", &digest::holdings([("c1", 1), ("c9", 1)]))
        .unwrap();
    assert!(hb.sync_needed);
    let s = c.sync(T0, "A", &claimed).unwrap();
    assert_eq!(s.released, vec!["c2".to_string()]);
    assert_eq!(s.not_held, vec!["c9".to_string()]);
    assert!(!c.holds("A", "c9", 1));
    assert_eq!(c.usage(&demo_pool(), "camera").counted(), 1);
    let hb = c
        .heartbeat(T0, "A", &digest::holdings([("c1", 1)]))
        .unwrap();
    assert!(!hb.sync_needed);
}

#[test]
fn free_and_kick_skip_newly_added_cameras_even_forced() {
    // A grace longer than the protection, so A is still reserved when it ends.
    let p = Policy {
        revocation_period_secs: 3600,
        offline_grace_secs: 7200,
        ..policy()
    };
    let mut c = two_servers(2, p);
    c.checkout(T0, "A", None, &cams(&["c1"]), false).unwrap();
    for force in [false, true] {
        assert!(matches!(
            c.free(T0, None, "c1", force),
            Err(Refusal::NewlyAdded { .. })
        ));
    }
    let k = c.kick(T0, "A", true).unwrap();
    assert_eq!(k.kept_newly_added, vec!["c1".to_string()]);
    assert!(!k.forgotten);
    // Once the period has passed, a kick revokes it.
    let k = c.kick(T0.plus(3_600_000), "A", false).unwrap();
    assert!(k.kept_newly_added.is_empty(), "{k:?}");
    assert_eq!(k.revoking, vec!["c1".to_string()]);
}

#[test]
fn moves_do_not_reset_newly_added() {
    let p = Policy {
        revocation_period_secs: 60,
        ..policy()
    };
    let mut c = two_servers(2, p);
    c.checkout(T0, "A", None, &cams(&["c1"]), false).unwrap();
    c.checkout(T0.plus(30_000), "B", None, &cams(&["c1"]), false)
        .unwrap();
    // First grant at T0 + 60 s protection: free at T0 + 61 s is allowed.
    c.heartbeat(T0.plus(55_000), "B", &c.holdings_digest("B"))
        .unwrap();
    c.renewals_persisted(T0.plus(55_000));
    let f = c.free(T0.plus(61_000), None, "c1", false).unwrap();
    assert_eq!(f.holder, "B");
    assert!(f.revoking);
}

#[test]
fn forced_free_returns_the_seat_at_once_and_says_so() {
    let mut c = two_servers(1, policy());
    c.checkout(T0, "A", None, &cams(&["c1"]), false).unwrap();
    let f = c.free(T0, None, "c1", true).unwrap();
    assert!(f.forced && !f.revoking);
    assert_eq!(c.usage(&demo_pool(), "camera").counted(), 0);
    assert!(c
        .drain_events()
        .iter()
        .any(|e| matches!(e, Event::ForcedOverlap { .. })));
    granted(
        &c.checkout(T0, "B", None, &cams(&["c1"]), false)
            .unwrap()
            .outcomes[0]
            .1,
    );
}

#[test]
fn kick_forgets_only_when_nothing_remains() {
    let mut c = two_servers(2, policy());
    c.checkout(T0, "A", None, &cams(&["c1"]), false).unwrap();
    let k = c.kick(T0, "A", false).unwrap();
    assert!(!k.forgotten);
    assert_eq!(k.revoking, vec!["c1".to_string()]);
    assert!(matches!(
        refusal(
            &c.checkout(T0, "A", None, &cams(&["c2"]), false)
                .unwrap()
                .outcomes[0]
                .1
        ),
        Refusal::ServerKicked
    ));
    c.acknowledge(T0, "A", "c1", 1).unwrap();
    assert!(
        c.enrolment("A").is_err(),
        "forgotten once its last revoking lease is acknowledged"
    );
    c.check_invariants(T0).unwrap();
}

#[test]
fn bound_to_other_key_on_checkout_and_on_enrol_while_holding() {
    let mut c = core_with(&[key("K", 2, policy()), key("L", 2, policy())]);
    enrol(&mut c, T0, &PoolId::default_of("K"), "A");
    assert_eq!(
        c.checkout(T0, "A", Some("L"), &cams(&["c1"]), false)
            .unwrap_err(),
        Refusal::BoundToOtherKey { key: "K".into() }
    );
    c.checkout(T0, "A", None, &cams(&["c1"]), false).unwrap();
    c.create_code(T0, &PoolId::default_of("L"), "x").unwrap();
    let req = EnrolRequest {
        code: "x".into(),
        name: "A".into(),
        version: "1".into(),
        server_id: "ignored".into(),
        credential: vec![],
        existing: Some("A".into()),
    };
    assert_eq!(
        c.enrol(T0, req.clone()).unwrap_err(),
        Refusal::BoundToOtherKey { key: "K".into() }
    );
    // Holding nothing, it may re-enrol into the other key's pool; the code still works.
    c.release(T0, "A", &["c1".to_string()]).unwrap();
    assert_eq!(c.enrol(T0, req).unwrap().key, "L");
}

#[test]
fn expiring_entry_shrinks_and_revokes_newest_first() {
    let mut k = key("K", 2, policy());
    k.entries.push(Entry {
        feature: "camera".into(),
        count: 2,
        not_after: T0.plus(100_000),
        order: "SO-2".into(),
    });
    let mut c = core_with(&[k]);
    enrol(&mut c, T0, &demo_pool(), "A");
    for (i, cam) in ["c1", "c2", "c3", "c4"].iter().enumerate() {
        c.checkout(T0.plus(i as u64), "A", None, &cams(&[cam]), false)
            .unwrap();
    }
    c.session_opened(T0, "A");
    for t in (10_000..100_000).step_by(10_000) {
        c.heartbeat(T0.plus(t), "A", &c.holdings_digest("A"))
            .unwrap();
        c.renewals_persisted(T0.plus(t));
    }
    c.drain_events();
    c.advance(T0.plus(100_000));
    let revoked: Vec<String> = c
        .drain_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::RevocationIssued {
                camera,
                reason: RevocationReason::Shrunk,
                ..
            } => Some(camera),
            _ => None,
        })
        .collect();
    assert_eq!(revoked, vec!["c4".to_string(), "c3".to_string()]);
    // Still counted until acknowledged: nothing is granted until use is back under.
    let o = &c
        .checkout(T0.plus(100_000), "A", None, &cams(&["c5"]), false)
        .unwrap()
        .outcomes[0]
        .1;
    assert!(matches!(refusal(o), Refusal::OverAllocated { .. }));
    c.acknowledge(T0.plus(100_001), "A", "c4", 1).unwrap();
    c.acknowledge(T0.plus(100_001), "A", "c3", 1).unwrap();
    assert_eq!(c.usage(&demo_pool(), "camera").counted(), 2);
    c.check_invariants(T0.plus(100_001)).unwrap();
}

#[test]
fn camera_contested_after_n_moves_within_the_window() {
    let p = Policy {
        contested_moves: 3,
        contested_window_secs: 60,
        ..policy()
    };
    let mut c = two_servers(4, p);
    let mut contested = 0;
    for i in 0..4u64 {
        let who = if i % 2 == 0 { "A" } else { "B" };
        c.checkout(T0.plus(i * 1000), who, None, &cams(&["c1"]), false)
            .unwrap();
        contested += c
            .drain_events()
            .iter()
            .filter(|e| matches!(e, Event::CameraContested { .. }))
            .count();
    }
    // Moves: A->B, B->A, A->B: the third raises it.
    assert_eq!(contested, 1);
    // The camera list marks it while the moves are inside the window.
    let marked = |c: &Core, now| {
        c.camera_views(now)
            .iter()
            .any(|v| v.camera_id == "c1" && v.state == "held" && v.contested)
    };
    assert!(marked(&c, T0.plus(3_000)));
    assert!(
        !marked(&c, T0.plus(62_000)),
        "still contested after the window"
    );
}

#[test]
fn classes_and_device_versions() {
    let mut p = policy();
    p.classes.insert(
        "encoder-4ch".into(),
        [("camera".to_string(), 4)].into_iter().collect(),
    );
    p.min_device_version = Some("2.0".into());
    p.current_device_version = Some("3.0".into());
    let mut c = two_servers(5, p.clone());
    let item = |cam: &str, class: Option<&str>, v: Option<&str>| CheckoutItem {
        camera: cam.into(),
        class: class.map(String::from),
        modules: vec![],
        device_version: v.map(String::from),
        epoch: None,
    };
    granted(
        &c.checkout(
            T0,
            "A",
            None,
            &[item("enc", Some("encoder-4ch"), Some("3.1"))],
            false,
        )
        .unwrap()
        .outcomes[0]
            .1,
    );
    assert_eq!(c.usage(&demo_pool(), "camera").counted(), 4);
    let out = c
        .checkout(
            T0,
            "A",
            None,
            &[
                item("old", None, Some("1.9")),
                item("leg", None, Some("2.5")),
                item("x", Some("nope"), None),
            ],
            false,
        )
        .unwrap();
    assert_eq!(
        refusal(&out.outcomes[0].1),
        Refusal::VersionRefused { min: "2.0".into() }
    );
    assert_eq!(refusal(&out.outcomes[1].1), Refusal::LegacyNotEntitled);
    assert_eq!(
        refusal(&out.outcomes[2].1),
        Refusal::UnknownClass {
            class: "nope".into()
        }
    );
    p.legacy_entitlement = true;
    let mut c = two_servers(1, p);
    let out = c
        .checkout(
            T0,
            "A",
            None,
            &[item("leg", None, Some("2.5")), item("new", None, Some("3"))],
            false,
        )
        .unwrap();
    assert!(matches!(
        out.outcomes[0].1,
        CameraOutcome::Granted { legacy: true, .. }
    ));
    granted(&out.outcomes[1].1);
    assert_eq!(
        c.usage(&demo_pool(), "camera").counted(),
        1,
        "the legacy licence costs nothing"
    );
}

#[test]
fn enrolment_codes_are_single_use_and_expire() {
    let mut c = core_with(&[key("K", 2, policy())]);
    c.create_code(T0, &demo_pool(), "12345678").unwrap();
    let req = |id: &str| EnrolRequest {
        code: "12345678".into(),
        name: id.into(),
        version: "1".into(),
        server_id: id.into(),
        credential: vec![],
        existing: None,
    };
    c.enrol(T0, req("A")).unwrap();
    assert_eq!(c.enrol(T0, req("B")).unwrap_err(), Refusal::CodeInvalid);
    c.create_code(T0, &demo_pool(), "87654321").unwrap();
    let mut late = req("C");
    late.code = "87654321".into();
    assert_eq!(
        c.enrol(T0.plus(CODE_VALIDITY_MS), late).unwrap_err(),
        Refusal::CodeExpired
    );
}

#[test]
fn server_move_is_atomic_and_keeps_the_key() {
    let mut c = core_with(&[key("K", 2, policy()), key("L", 2, policy())]);
    enrol(&mut c, T0, &demo_pool(), "A");
    c.checkout(T0, "A", None, &cams(&["c1"]), false).unwrap();
    assert_eq!(
        c.move_server(T0, "A", &PoolId::default_of("L"))
            .unwrap_err(),
        Refusal::BoundToOtherKey { key: "K".into() }
    );
    c.check_invariants(T0).unwrap();
}

#[test]
fn core_state_round_trips_through_postcard() {
    let mut c = two_servers(2, policy());
    c.checkout(T0, "A", None, &cams(&["c1"]), false).unwrap();
    let bytes = postcard::to_allocvec(&c).unwrap();
    let back: Core = postcard::from_bytes(&bytes).unwrap();
    back.check_invariants(T0).unwrap();
    assert!(back.holds("A", "c1", 1));
}

#[test]
fn a_snapshot_writes_each_distinct_terms_once_and_the_leases_share_them_again_loaded() {
    let mut c = two_servers(200, policy());
    let names: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
    let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    c.checkout(T0, "A", None, &cams(&names[..60]), false)
        .unwrap();
    c.checkout(T0, "B", None, &cams(&names[60..]), false)
        .unwrap();
    let bytes = postcard::to_allocvec(&c).unwrap();
    let occurrences = |needle: &[u8]| bytes.windows(needle.len()).filter(|w| *w == needle).count();
    for (server, camera) in [("A", "c0"), ("B", "c99")] {
        let terms = c.cameras.get("K", camera).unwrap().terms().unwrap();
        assert_eq!(terms.server, server);
        assert_eq!(occurrences(&postcard::to_allocvec(terms).unwrap()), 1);
    }

    let back: Core = postcard::from_bytes(&bytes).unwrap();
    back.check_invariants(T0).unwrap();
    let shared = |camera: &str| {
        &back
            .cameras
            .get("K", camera)
            .unwrap()
            .held
            .as_ref()
            .unwrap()
            .terms
    };
    assert!(Arc::ptr_eq(shared("c0"), shared("c59")));
    assert!(Arc::ptr_eq(shared("c60"), shared("c99")));
    assert!(!Arc::ptr_eq(shared("c0"), shared("c99")));
    // The same state writes the same bytes.
    assert_eq!(postcard::to_allocvec(&back).unwrap(), bytes);
}

#[test]
fn a_lease_referring_to_terms_not_in_the_table_does_not_load() {
    let mut c = two_servers(1, policy());
    c.checkout(T0, "A", None, &cams(&["c1"]), false).unwrap();
    let held = c.cameras.get("K", "c1").unwrap().held.clone().unwrap();
    let table = vec![(*held.terms).clone()];
    let mut terms = compact::TermsIndex::default();
    terms.add(&held.terms);
    let (index, _) = terms.split();
    let written = compact::writing_cameras(index, || postcard::to_allocvec(&held)).unwrap();
    let (read, _) = compact::reading_cameras(Some(table.clone()), || {
        postcard::from_bytes::<Held>(&written)
    });
    assert_eq!(read.unwrap(), held);
    let (read, _) =
        compact::reading_cameras(Some(Vec::new()), || postcard::from_bytes::<Held>(&written));
    assert!(read.is_err());
    // Nor does one written outside a table.
    assert!(postcard::to_allocvec(&held).is_err());
}

// ---- Tests added for the mutants `cargo mutants` found surviving (see the Core issue's
// note): each pins one behaviour the property tests did not single out.

#[test]
fn releasing_a_lease_withdraws_only_its_own_pending_move_request() {
    let mut c = two_servers(4, policy());
    c.checkout(T0, "A", None, &cams(&["c1", "c2", "c3"]), false)
        .unwrap();
    // A forced free leaves a (non-provisional) revocation for c2 at epoch 1 pending.
    c.free(T0, None, "c2", true).unwrap();
    c.session_opened(T0, "A");
    // B asks for c1 and c3: provisional move requests to A, also at epoch 1.
    for cam in ["c1", "c3"] {
        let o = &c
            .checkout(T0, "B", None, &cams(&[cam]), false)
            .unwrap()
            .outcomes[0]
            .1;
        assert!(matches!(o, CameraOutcome::AwaitingHolder { .. }));
    }
    c.release(T0, "A", &["c1".to_string()]).unwrap();
    let left: Vec<(String, u64, bool)> = c
        .server_revocations("A")
        .into_iter()
        .map(|r| (r.camera, r.epoch, r.provisional))
        .collect();
    assert_eq!(
        left,
        vec![("c2".to_string(), 1, false), ("c3".to_string(), 1, true)]
    );
}

#[test]
fn moving_a_server_to_another_pool_of_its_key_moves_its_seats() {
    let mut c = two_servers(4, policy());
    // A second pool of key K holding one camera seat taken from Default.
    let p2 = PoolId::new("K", "P2");
    c.pools.get_mut(&demo_pool()).unwrap().seats.insert(0, 3);
    c.pools.insert(
        p2.clone(),
        Pool {
            id: p2.clone(),
            seats: [(0, 1)].into_iter().collect(),
            usage: BTreeMap::new(),
        },
    );
    c.checkout(T0, "A", None, &cams(&["c1", "c2"]), false)
        .unwrap();
    let err = c.move_server(T0, "A", &p2).unwrap_err();
    assert_eq!(
        err,
        Refusal::NoSeats {
            feature: "camera".into(),
            in_use: 0,
            total: 1
        }
    );
    c.release(T0, "A", &["c2".to_string()]).unwrap();
    c.move_server(T0, "A", &p2).unwrap();
    assert_eq!(c.usage(&p2, "camera").held, 1);
    assert_eq!(c.usage(&demo_pool(), "camera").held, 0);
    assert_eq!(c.server_pool("A"), Some(&p2));
    c.check_invariants(T0).unwrap();
}

#[test]
fn camera_ids_are_1_to_128_bytes_without_control_characters() {
    let mut c = two_servers(4, policy());
    let ok = "x".repeat(128);
    let out = c
        .checkout(
            T0,
            "A",
            None,
            &cams(&[&ok, &"y".repeat(129), "", "a\0b"]),
            false,
        )
        .unwrap();
    granted(&out.outcomes[0].1);
    for (_, o) in &out.outcomes[1..] {
        assert!(matches!(refusal(o), Refusal::BadRequest { .. }), "{o:?}");
    }
}

#[test]
fn contested_counts_moves_strictly_inside_the_window_and_zero_disables_it() {
    let p = Policy {
        contested_moves: 2,
        contested_window_secs: 10,
        ..policy()
    };
    let mut c = two_servers(4, p);
    c.checkout(T0, "A", None, &cams(&["c1"]), false).unwrap();
    c.checkout(T0.plus(1_000), "B", None, &cams(&["c1"]), false)
        .unwrap();
    // The second move comes exactly one window after the first: it is not inside it.
    c.checkout(T0.plus(11_000), "A", None, &cams(&["c1"]), false)
        .unwrap();
    assert!(!c
        .drain_events()
        .iter()
        .any(|e| matches!(e, Event::CameraContested { .. })));
    c.checkout(T0.plus(12_000), "B", None, &cams(&["c1"]), false)
        .unwrap();
    assert!(c
        .drain_events()
        .iter()
        .any(|e| matches!(e, Event::CameraContested { moves: 2, .. })));

    let off = Policy {
        contested_moves: 0,
        ..policy()
    };
    let mut c = two_servers(4, off);
    for (i, who) in ["A", "B", "A", "B"].iter().enumerate() {
        c.checkout(T0.plus(i as u64), who, None, &cams(&["c1"]), false)
            .unwrap();
    }
    assert!(!c
        .drain_events()
        .iter()
        .any(|e| matches!(e, Event::CameraContested { .. })));
}

#[test]
fn a_sync_claiming_another_servers_camera_gets_not_held() {
    let mut c = two_servers(4, policy());
    c.checkout(T0, "A", None, &cams(&["c1"]), false).unwrap();
    let s = c.sync(T0, "B", &[("c1".to_string(), 1)]).unwrap();
    assert_eq!(s.not_held, vec!["c1".to_string()]);
    assert!(c.holds("A", "c1", 1));
}

#[test]
fn a_sync_that_releases_is_a_durable_check_in() {
    let mut c = two_servers(4, policy());
    c.checkout(T0, "A", None, &cams(&["c1", "c2"]), false)
        .unwrap();
    let later = T0.plus(20_000);
    // Claims nothing new: no release, so the reservation still counts from T0.
    c.sync(later, "A", &[("c1".to_string(), 1), ("c2".to_string(), 1)])
        .unwrap();
    assert_eq!(c.reservation_end("A"), Some(T0.plus(GRACE + INTERVAL)));
    // Releases c2: that change is durable, and so is the renewal with it.
    c.sync(later, "A", &[("c1".to_string(), 1)]).unwrap();
    assert_eq!(c.reservation_end("A"), Some(later.plus(GRACE + INTERVAL)));
}

#[test]
fn next_deadline_is_the_earliest_reservation_end() {
    let mut c = two_servers(4, policy());
    c.checkout(T0, "A", None, &cams(&["c1"]), false).unwrap();
    c.checkout(T0.plus(5_000), "B", None, &cams(&["c2"]), false)
        .unwrap();
    c.advance(T0.plus(6_000));
    assert_eq!(c.next_deadline(), T0.plus(GRACE + INTERVAL));
}

#[test]
fn a_shrinking_feature_revokes_the_newest_lease_that_uses_it() {
    let mut k = key("K", 4, policy());
    // The lpr seat expires; the newest lease (c2) has no lpr and must be left alone.
    k.entries[1].not_after = T0.plus(100_000);
    let mut c = core_with(&[k]);
    enrol(&mut c, T0, &demo_pool(), "A");
    let mut with_lpr = CheckoutItem::camera("c1");
    with_lpr.modules = vec!["lpr".into()];
    c.checkout(T0, "A", None, &[with_lpr], false).unwrap();
    c.checkout(T0.plus(1), "A", None, &cams(&["c2"]), false)
        .unwrap();
    c.session_opened(T0, "A");
    c.heartbeat(T0.plus(50_000), "A", &c.holdings_digest("A"))
        .unwrap();
    c.renewals_persisted(T0.plus(50_000));
    c.drain_events();
    c.advance(T0.plus(100_000));
    let revoked: Vec<String> = c
        .drain_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::RevocationIssued { camera, .. } => Some(camera),
            _ => None,
        })
        .collect();
    assert_eq!(revoked, vec!["c1".to_string()]);
    assert!(c.holds("A", "c2", 1));
}

#[test]
fn with_events_muted_commands_leave_the_same_state_and_make_no_events() {
    // The store replays its log with events muted: every command must change the state
    // exactly as it does with them kept, whatever events it makes.
    let year = T0.plus(365 * time::DAY);
    let document = key_document(
        "K",
        vec![
            entry("camera", 3, year, "SO-1"),
            entry("camera", 1, T0.plus(5 * time::MINUTE), "SO-2"),
            entry("lpr", 1, year, "SO-1"),
        ],
        Policy {
            contested_moves: 2,
            contested_window_secs: 600,
            ..policy()
        },
    );
    let checkout = |server: &str, cameras: &[&str], after_wait: bool| Command::Checkout {
        server: server.into(),
        key: None,
        items: cams(cameras),
        after_wait,
    };
    let mut script = vec![(
        T0,
        Command::InstallKey {
            document,
            demo: false,
        },
    )];
    for s in ["A", "B"] {
        script.push((
            T0,
            Command::CreateCode {
                pool: demo_pool(),
                code: format!("code-{s}"),
            },
        ));
        script.push((
            T0,
            Command::Enrol {
                request: EnrolRequest {
                    code: format!("code-{s}"),
                    name: s.into(),
                    version: "1.0".into(),
                    server_id: s.into(),
                    credential: vec![1],
                    existing: None,
                },
            },
        ));
        script.push((T0, Command::SessionOpened { server: s.into() }));
    }
    let t = |secs: u64| T0.plus(secs * 1000);
    script.extend([
        (t(1), checkout("A", &["c1", "c2", "c3", "c4"], false)),
        (t(2), checkout("B", &["c1"], false)),
        (
            t(3),
            Command::Acknowledge {
                server: "A".into(),
                camera: "c1".into(),
                epoch: 1,
            },
        ),
        (t(4), checkout("B", &["c1"], true)),
        (t(5), Command::SessionClosed { server: "A".into() }),
        (t(6), checkout("A", &["c1"], false)),
        (t(7), checkout("B", &["c2"], true)),
        (
            t(8),
            Command::Release {
                server: "B".into(),
                cameras: vec!["c2".into()],
            },
        ),
        (
            t(9),
            Command::Free {
                key: None,
                camera: "c3".into(),
                force: true,
            },
        ),
        (t(400), Command::Advance),
        (
            t(401),
            Command::RenameServer {
                server: "B".into(),
                name: "B2".into(),
            },
        ),
        (t(4_000), Command::Advance),
        (
            t(4_001),
            Command::Kick {
                server: "B".into(),
                force: true,
            },
        ),
    ]);
    let mut live = Core::new();
    let mut muted = Core::new();
    let mut kinds = BTreeSet::new();
    for (n, (now, command)) in script.into_iter().enumerate() {
        let kept = live.apply(now, command.clone());
        let outcome = muted.with_events_muted(|core| core.apply(now, command));
        assert_eq!(outcome, kept, "step {n}");
        assert_eq!(
            postcard::to_allocvec(&muted).unwrap(),
            postcard::to_allocvec(&live).unwrap(),
            "step {n}"
        );
        assert_eq!(muted.pending_events(), 0, "step {n}");
        for e in live.drain_events() {
            let name = format!("{e:?}");
            kinds.insert(name.split([' ', '{', '(']).next().unwrap_or("").to_string());
        }
    }
    assert!(
        kinds.len() >= 10,
        "the script makes events of many kinds: {kinds:?}"
    );
    muted.apply(t(4_002), checkout("A", &["c9"], false));
    assert!(
        muted.pending_events() > 0,
        "out of with_events_muted, events are kept again"
    );
}
