//! The store as its callers see it: round trips, generations and revisions, atomicity,
//! history and rollback, the change feed, bad files, and durability under `SIGKILL` (with a
//! real child process: this test binary re-executed).

use super::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};
use trellis_api::parse_documents;

/// A fresh directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("trellis-store-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn docs(text: &str) -> Vec<Resource> {
    parse_documents(text, "t.yaml").unwrap_or_else(|e| panic!("test documents don't parse: {e:?}"))
}

/// `Service/NAMESPACE/NAME` with one host, so documents differ by `host`.
fn service(namespace: &str, name: &str, host: &str) -> Resource {
    docs(&format!("kind: Service\nname: {name}\nnamespace: {namespace}\nhosts: [{host}]\n")).remove(0)
}

fn key(kind: &str, namespace: &str, name: &str) -> ResourceKey {
    ResourceKey::new(kind, namespace, name)
}

fn host_of(stored: &Stored) -> &str {
    stored.document["hosts"][0].as_str().unwrap_or("?")
}

const SHOP: &str = r#"
kind: Service
name: reviews
namespace: shop
ports: [{port: 9080, protocol: http}]
---
kind: Endpoints
service: reviews
namespace: shop
endpoints:
  - {address: "127.0.0.1:9081"}
---
kind: Service
name: cart
namespace: shop
---
kind: Service
name: login
namespace: auth
---
kind: Proxy
name: edge
"#;

#[test]
fn keys_of_documents() {
    let all = docs(SHOP);
    let keys: Vec<String> = all.iter().map(|d| ResourceKey::of(d).to_string()).collect();
    assert_eq!(
        keys,
        ["Service/shop/reviews", "Endpoints/shop/reviews", "Service/shop/cart", "Service/auth/login", "Proxy/-/edge"]
    );
    assert_eq!(ResourceKey::of(&docs("kind: Proxy\n").remove(0)).to_string(), "Proxy/-/-");
}

#[test]
fn apply_get_list_round_trip() {
    let dir = TempDir::new("roundtrip");
    let store = Store::open(&dir.0).unwrap();
    assert_eq!(store.revision(), 0);
    assert!(store.list(None, None).unwrap().is_empty());

    let all = docs(SHOP);
    let changes = store.apply(&all, "alice", false).unwrap();
    assert_eq!(changes.len(), 5);
    for (change, doc) in changes.iter().zip(&all) {
        assert_eq!(change.key, ResourceKey::of(doc));
        assert_eq!((change.action, change.revision, change.generation), (Action::Created, 1, 1));
    }
    assert_eq!(store.revision(), 1);

    let reviews = store.get(&key("Service", "shop", "reviews")).unwrap().unwrap();
    assert_eq!(reviews.document, serde_json::to_value(&all[0]).unwrap());
    assert_eq!(reviews.document["kind"], "Service");
    assert_eq!((reviews.revision, reviews.generation, reviews.deleted), (1, 1, false));
    assert_eq!(reviews.actor, "alice");
    assert!(reviews.time_unix_ms > 1_600_000_000_000);
    assert!(store.get(&key("Service", "shop", "nope")).unwrap().is_none());

    let names = |items: Vec<Stored>| items.into_iter().map(|s| s.key.to_string()).collect::<Vec<_>>();
    assert_eq!(
        names(store.list(None, None).unwrap()),
        ["Endpoints/shop/reviews", "Proxy/-/edge", "Service/auth/login", "Service/shop/cart", "Service/shop/reviews"]
    );
    assert_eq!(
        names(store.list(Some("Service"), None).unwrap()),
        ["Service/auth/login", "Service/shop/cart", "Service/shop/reviews"]
    );
    assert_eq!(
        names(store.list(Some("Service"), Some("shop")).unwrap()),
        ["Service/shop/cart", "Service/shop/reviews"]
    );
    assert_eq!(
        names(store.list(None, Some("shop")).unwrap()),
        ["Endpoints/shop/reviews", "Service/shop/cart", "Service/shop/reviews"]
    );
    assert!(store.list(Some("Nothing"), None).unwrap().is_empty());
    assert!(store.list(Some("Service"), Some("nowhere")).unwrap().is_empty());
}

#[test]
fn unchanged_apply_makes_no_new_generation_or_revision() {
    let dir = TempDir::new("unchanged");
    let store = Store::open(&dir.0).unwrap();
    store.apply(&docs(SHOP), "alice", false).unwrap();
    let feed = store.subscribe();

    let again = store.apply(&docs(SHOP), "bob", false).unwrap();
    assert!(again.iter().all(|c| c.action == Action::Unchanged && c.revision == 1 && c.generation == 1), "{again:?}");
    assert_eq!(store.revision(), 1);
    assert_eq!(store.history(&key("Service", "shop", "cart")).unwrap().len(), 1);
    assert_eq!(store.get(&key("Service", "shop", "cart")).unwrap().unwrap().actor, "alice");
    assert!(feed.is_empty(), "an all-unchanged apply commits nothing and sends nothing");

    // One change among unchanged ones: one new revision, only that document gets a generation.
    let mut mixed = docs(SHOP);
    mixed[2] = service("shop", "cart", "cart.example");
    let changes = store.apply(&mixed, "bob", false).unwrap();
    let actions: Vec<_> = changes.iter().map(|c| (c.action, c.revision, c.generation)).collect();
    assert_eq!(actions[2], (Action::Updated, 2, 2));
    assert!(actions.iter().enumerate().all(|(i, a)| i == 2 || *a == (Action::Unchanged, 1, 1)), "{actions:?}");
    assert_eq!(store.revision(), 2);

    // The same document twice in one batch counts once.
    let twice = [service("shop", "cart", "cart.example"), service("shop", "cart", "cart.example")];
    let changes = store.apply(&twice, "bob", false).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].action, Action::Unchanged);
}

#[test]
fn multi_document_apply_is_all_or_nothing() {
    let dir = TempDir::new("atomic");
    let store = Store::open(&dir.0).unwrap();
    store.apply(&[service("shop", "cart", "v1.example")], "alice", false).unwrap();

    // The collision is found only after the first three documents were written in the
    // transaction: the error must undo them.
    let batch = [
        service("shop", "cart", "v2.example"),
        service("shop", "new", "new.example"),
        service("auth", "login", "login.example"),
        service("shop", "new", "other.example"),
    ];
    let err = store.apply(&batch, "mallory", false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "apply: Service/shop/new is given twice with different contents (documents 2 and 4); nothing was stored"
    );
    assert!(err.is_bad_request());
    assert_eq!(store.revision(), 1);
    assert_eq!(host_of(&store.get(&key("Service", "shop", "cart")).unwrap().unwrap()), "v1.example");
    assert!(store.get(&key("Service", "shop", "new")).unwrap().is_none());
    assert!(store.get(&key("Service", "auth", "login")).unwrap().is_none());
    assert!(store.history(&key("Service", "shop", "new")).unwrap().is_empty());
    assert_eq!(store.changes_since(1).unwrap().len(), 0);

    // The store is still usable, and the next commit takes revision 2.
    let changes = store.apply(&batch[..3], "alice", false).unwrap();
    assert!(changes.iter().all(|c| c.revision == 2));
}

#[test]
fn dry_run_writes_nothing() {
    let dir = TempDir::new("dryrun");
    let store = Store::open(&dir.0).unwrap();
    let feed = store.subscribe();
    let changes = store.apply(&docs(SHOP), "alice", true).unwrap();
    assert!(changes.iter().all(|c| c.action == Action::Created && c.revision == 1), "{changes:?}");
    assert_eq!(store.revision(), 0);
    assert!(store.list(None, None).unwrap().is_empty());
    assert!(feed.is_empty());

    store.apply(&docs(SHOP), "alice", false).unwrap();
    let changes = store.apply(&[service("shop", "cart", "x.example")], "alice", true).unwrap();
    assert_eq!((changes[0].action, changes[0].revision, changes[0].generation), (Action::Updated, 2, 2));
    assert_eq!(store.get(&key("Service", "shop", "cart")).unwrap().unwrap().generation, 1);
}

#[test]
fn history_and_rollback() {
    let dir = TempDir::new("rollback");
    let store = Store::open(&dir.0).unwrap();
    let reviews = key("Service", "shop", "reviews");
    for (i, host) in ["a.example", "b.example", "c.example"].iter().enumerate() {
        let changes = store.apply(&[service("shop", "reviews", host)], &format!("user{i}"), false).unwrap();
        assert_eq!(changes[0].generation, i as u64 + 1);
    }
    store.apply(&[service("shop", "other", "o.example")], "x", false).unwrap();

    let history = store.history(&reviews).unwrap();
    let summary: Vec<_> = history.iter().map(|s| (s.generation, s.revision, host_of(s), s.actor.as_str())).collect();
    assert_eq!(summary, [(1, 1, "a.example", "user0"), (2, 2, "b.example", "user1"), (3, 3, "c.example", "user2")]);

    let change = store.rollback(&reviews, 1, "ops").unwrap();
    assert_eq!(change, Change { key: reviews.clone(), action: Action::RolledBack, revision: 5, generation: 4 });
    let current = store.get(&reviews).unwrap().unwrap();
    assert_eq!((current.generation, host_of(&current), current.actor.as_str()), (4, "a.example", "ops"));
    assert_eq!(current.document, history[0].document);
    assert_eq!(store.history(&reviews).unwrap().len(), 4);

    // Rolling back to what is already current writes nothing.
    let change = store.rollback(&reviews, 4, "ops").unwrap();
    assert_eq!((change.action, change.revision, change.generation), (Action::Unchanged, 5, 4));
    assert_eq!(store.revision(), 5);

    let err = store.rollback(&reviews, 7, "ops").unwrap_err();
    assert_eq!(err.to_string(), "rollback Service/shop/reviews to generation 7: no such generation; it has 1..=4");
    let err = store.rollback(&reviews, 0, "ops").unwrap_err();
    assert_eq!(err.to_string(), "rollback Service/shop/reviews to generation 0: no such generation; it has 1..=4");
    let err = store.rollback(&key("Service", "shop", "ghost"), 1, "ops").unwrap_err();
    assert_eq!(err.to_string(), "rollback Service/shop/ghost to generation 1: Service/shop/ghost has no history");
    assert!(err.is_bad_request());
    assert_eq!(store.revision(), 5);
}

#[test]
fn delete_then_history_shows_the_deletion() {
    let dir = TempDir::new("delete");
    let store = Store::open(&dir.0).unwrap();
    let cart = key("Service", "shop", "cart");
    store.apply(&docs(SHOP), "alice", false).unwrap();
    store.apply(&[service("shop", "cart", "v2.example")], "alice", false).unwrap();

    let change = store.delete(&cart, "bob").unwrap().unwrap();
    assert_eq!(change, Change { key: cart.clone(), action: Action::Deleted, revision: 3, generation: 3 });
    assert!(store.get(&cart).unwrap().is_none());
    assert!(!store.list(None, None).unwrap().iter().any(|s| s.key == cart));
    assert_eq!(store.list(None, None).unwrap().len(), 4);
    assert!(store.delete(&cart, "bob").unwrap().is_none(), "deleting a deleted resource");
    assert!(store.delete(&key("Service", "shop", "ghost"), "bob").unwrap().is_none());
    assert_eq!(store.revision(), 3);

    let history = store.history(&cart).unwrap();
    let summary: Vec<_> = history.iter().map(|s| (s.generation, s.revision, s.deleted, s.actor.as_str())).collect();
    assert_eq!(summary, [(1, 1, false, "alice"), (2, 2, false, "alice"), (3, 3, true, "bob")]);
    assert_eq!(host_of(&history[2]), "v2.example", "a deletion keeps the document it deleted");

    let err = store.rollback(&cart, 3, "ops").unwrap_err();
    assert!(err.to_string().contains("generation 3 is a deletion"), "{err}");

    // Applying it again creates it anew, continuing the generations; so does a rollback.
    let change = store.apply(&[service("shop", "cart", "v2.example")], "carol", false).unwrap().remove(0);
    assert_eq!((change.action, change.revision, change.generation), (Action::Created, 4, 4));
    store.delete(&cart, "bob").unwrap().unwrap();
    let change = store.rollback(&cart, 1, "ops").unwrap();
    assert_eq!((change.action, change.generation), (Action::RolledBack, 6));
    assert_eq!(store.get(&cart).unwrap().unwrap().generation, 6);
}

#[test]
fn revision_is_monotonic_across_reopen() {
    let dir = TempDir::new("reopen");
    let mut last = 0;
    for round in 0..3 {
        let store = Store::open(&dir.0).unwrap();
        assert_eq!(store.revision(), last, "round {round}");
        for i in 0..3 {
            let change = store.apply(&[service("shop", "cart", &format!("r{round}-{i}.example"))], "a", false).unwrap();
            assert!(change[0].revision > last);
            assert_eq!(change[0].revision, store.revision());
            last = change[0].revision;
        }
        store.delete(&key("Service", "shop", "cart"), "a").unwrap();
        last += 1;
        assert_eq!(store.revision(), last);
    }
    let store = Store::open(&dir.0).unwrap();
    assert_eq!(store.revision(), 12);
    assert_eq!(store.history(&key("Service", "shop", "cart")).unwrap().len(), 12);
}

#[test]
fn changes_since_replays_commits_in_order() {
    let dir = TempDir::new("since");
    let store = Store::open(&dir.0).unwrap();
    store.apply(&docs(SHOP), "a", false).unwrap(); // revision 1: 5 documents
    store.apply(&[service("shop", "cart", "v2.example"), service("shop", "new", "n.example")], "b", false).unwrap(); // 2
    store.apply(&docs(SHOP), "c", false).unwrap(); // revision 3: reverts cart to v1
    store.delete(&key("Service", "shop", "new"), "d").unwrap(); // 4

    let all = store.changes_since(0).unwrap();
    assert_eq!(all.len(), 5 + 2 + 1 + 1);
    assert!(all.windows(2).all(|w| w[0].revision <= w[1].revision));

    let summary = |items: Vec<Stored>| {
        items.into_iter().map(|s| (s.revision, s.key.to_string(), s.generation, s.deleted)).collect::<Vec<_>>()
    };
    assert_eq!(
        summary(store.changes_since(1).unwrap()),
        [
            (2, "Service/shop/cart".to_string(), 2, false),
            (2, "Service/shop/new".to_string(), 1, false),
            (3, "Service/shop/cart".to_string(), 3, false),
            (4, "Service/shop/new".to_string(), 2, true),
        ]
    );
    assert_eq!(summary(store.changes_since(3).unwrap()), [(4, "Service/shop/new".to_string(), 2, true)]);
    assert!(store.changes_since(4).unwrap().is_empty());
    assert!(store.changes_since(99).unwrap().is_empty());
    assert!(store.changes_since(u64::MAX).unwrap().is_empty());
}

#[test]
fn subscribers_get_each_commit_after_it_is_durable() {
    let dir = TempDir::new("feed");
    let store = Store::open(&dir.0).unwrap();
    let mut feed = store.subscribe();
    store.apply(&docs(SHOP), "a", false).unwrap();
    store.apply(&docs(SHOP), "a", false).unwrap(); // unchanged: nothing sent
    store.apply(&[service("shop", "cart", "v2.example"), service("shop", "reviews", "r.example")], "a", false).unwrap();
    store.rollback(&key("Service", "shop", "cart"), 1, "a").unwrap();

    let first = feed.try_recv().unwrap();
    assert_eq!(first.len(), 5);
    assert!(first.iter().all(|c| c.revision == 1 && c.action == Action::Created));
    let second = feed.try_recv().unwrap();
    assert_eq!(second.iter().map(|c| (c.revision, c.action)).collect::<Vec<_>>(), [(2, Action::Updated); 2]);
    let third = feed.try_recv().unwrap();
    assert_eq!(
        third,
        [Change { key: key("Service", "shop", "cart"), action: Action::RolledBack, revision: 3, generation: 3 }]
    );
    assert!(feed.try_recv().is_err());

    // A clone shares the store and its feed; concurrent writers get distinct revisions, in order.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..5 {
                    store.apply(&[service("load", &format!("s{t}"), &format!("h{i}.example"))], "t", false).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let revisions: Vec<u64> = std::iter::from_fn(|| feed.try_recv().ok()).map(|c| c[0].revision).collect();
    assert_eq!(revisions, (4..24).collect::<Vec<_>>());
    assert_eq!(store.revision(), 23);
}

#[test]
fn json_shapes_match_the_api() {
    let dir = TempDir::new("json");
    let store = Store::open(&dir.0).unwrap();
    let change = store.apply(&[service("shop", "cart", "a.example")], "alice", false).unwrap().remove(0);
    assert_eq!(
        serde_json::to_value(&change).unwrap(),
        serde_json::json!({"key": "Service/shop/cart", "action": "Created", "revision": 1, "generation": 1})
    );
    let stored = serde_json::to_value(store.get(&change.key).unwrap().unwrap()).unwrap();
    assert_eq!(stored["key"], serde_json::json!({"kind": "Service", "namespace": "shop", "name": "cart"}));
    for field in ["revision", "generation", "document", "deleted", "actor", "time_unix_ms"] {
        assert!(stored.get(field).is_some(), "{field} missing in {stored}");
    }
}

#[test]
fn a_corrupt_file_is_a_clear_error() {
    let dir = TempDir::new("corrupt");
    std::fs::write(dir.0.join(FILE_NAME), b"this is not a redb file, just some text that is long enough".repeat(100))
        .unwrap();
    let err = Store::open(&dir.0).unwrap_err();
    let message = err.to_string();
    eprintln!("garbage file: {message}");
    assert!(message.contains(&dir.0.join(FILE_NAME).display().to_string()), "{message}");
    assert!(message.contains("cannot open"), "{message}");

    // A file cut short after real data.
    let dir = TempDir::new("truncated");
    {
        let store = Store::open(&dir.0).unwrap();
        store.apply(&docs(SHOP), "a", false).unwrap();
    }
    let file = dir.0.join(FILE_NAME);
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len / 3).unwrap();
    // Either redb recovers a consistent state or it reports the damage; never a panic.
    match Store::open(&dir.0) {
        Ok(store) => {
            eprintln!("truncated file: opened; list: {:?}", store.list(None, None).map(|l| l.len()));
        }
        Err(e) => {
            eprintln!("truncated file: {e}");
            assert!(e.to_string().contains(&file.display().to_string()), "{e}");
        }
    }

    // Not a directory.
    let dir = TempDir::new("notdir");
    let blocker = dir.0.join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let err = Store::open(&blocker.join("data")).unwrap_err();
    assert!(err.to_string().starts_with("cannot create the data directory"), "{err}");
}

#[test]
fn a_record_that_does_not_decode_is_reported_as_corruption() {
    let dir = TempDir::new("badrecord");
    let store = Store::open(&dir.0).unwrap();
    let cart = key("Service", "shop", "cart");
    store.apply(&[service("shop", "cart", "a.example")], "a", false).unwrap();
    let txn = store.inner.db.begin_write().unwrap();
    txn.open_table(GENERATIONS).unwrap().insert(schema::generation_key(&cart, 1), b"{not json".as_slice()).unwrap();
    txn.commit().unwrap();

    let err = store.get(&cart).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with(&format!("store {} is corrupt (found while trying to get Service/shop/cart): generation 1 of Service/shop/cart does not decode:", store.path().display())), "{message}");
    assert!(store.list(None, None).is_err());
    assert!(store.apply(&[service("shop", "cart", "b.example")], "a", false).is_err());
    assert!(
        !store.apply(&[service("shop", "other", "b.example")], "a", false).unwrap().is_empty(),
        "other keys still work"
    );
}

#[test]
fn a_second_open_of_the_same_store_is_refused() {
    let dir = TempDir::new("twice");
    let _store = Store::open(&dir.0).unwrap();
    let err = Store::open(&dir.0).unwrap_err();
    assert!(matches!(err, StoreError::AlreadyOpen { .. }), "{err:?}");
    assert!(err.to_string().contains("is already open"), "{err}");
}

/// Set in the child of [`sigkill_during_applies_loses_nothing_acknowledged`]: the store's
/// directory.
const CRASH_CHILD_DIR: &str = "TRELLIS_STORE_CRASH_CHILD_DIR";

/// The child's side: applies generation after generation of one document, printing
/// `acked N` after each `apply` returned `Ok`, until it is killed. A no-op in a normal run.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) else { return };
    let store = Store::open(Path::new(&dir)).unwrap();
    let cart = key("Service", "shop", "cart");
    let mut out = std::io::stdout().lock();
    loop {
        let next = store.get(&cart).unwrap().map_or(1, |s| s.generation + 1);
        let changes = store.apply(&[service("shop", "cart", &format!("g{next}.example"))], "crash", false).unwrap();
        writeln!(out, "acked {}", changes[0].generation).unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_during_applies_loses_nothing_acknowledged() {
    use std::os::unix::process::ExitStatusExt;
    let dir = TempDir::new("sigkill");
    let cart = key("Service", "shop", "cart");
    let mut previous = 0;
    for round in 0..4 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::tests::crash_child", "--nocapture", "--test-threads=1"])
            .env(CRASH_CHILD_DIR, &dir.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (acks_tx, acks) = std::sync::mpsc::channel::<u64>();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("acked ").and_then(|n| n.parse().ok()) {
                    let _ = acks_tx.send(n);
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });

        // Wait for the child to be writing, then kill it at a random moment.
        let Ok(mut last_acked) = acks.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!("round {round}: the child acknowledged nothing: {}", errors.join().unwrap_or_default())
        };
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let deadline = Instant::now() + Duration::from_millis(20 + u64::from(nanos % 300));
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        reader.join().unwrap();
        let stderr = errors.join().unwrap();
        assert_eq!(status.signal(), Some(9), "round {round}: the child ended by itself: {status}\n{stderr}");
        last_acked = last_acked.max(acks.try_iter().max().unwrap_or(0));
        assert!(last_acked > previous, "round {round}: no progress ({last_acked} after {previous})");

        let store = Store::open(&dir.0).unwrap();
        let current = store.get(&cart).unwrap().unwrap();
        assert!(
            current.generation >= last_acked,
            "round {round}: generation {} stored, but {last_acked} was acknowledged",
            current.generation
        );
        assert!(current.generation <= last_acked + 1, "at most the one unacknowledged apply in flight");
        assert_eq!(host_of(&current), format!("g{}.example", current.generation));
        assert_eq!(store.revision(), current.generation);
        let history = store.history(&cart).unwrap();
        assert_eq!(history.len() as u64, current.generation);
        assert!(history.iter().enumerate().all(|(i, s)| s.generation == i as u64 + 1));
        eprintln!("round {round}: killed after {last_acked} acknowledged, {} stored", current.generation);
        previous = current.generation;
    }
}
