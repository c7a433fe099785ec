//! Labels and built-in rules with real deliveries.

use pigeon_e2e::{Pair, TestHome};

fn ids_with_label(home: &TestHome, label: &str) -> Vec<String> {
    let list = home.json(&["inbox", "list", "--label", label, "--json"]);
    list.as_array()
        .expect("list")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect()
}

#[test]
fn a_sender_rule_labels_deliveries_and_apply_catches_up() {
    let pair = Pair::start();
    let before = pair.alice.send("bob", "sent before the rule");
    pair.bob.wait_arrival(&before);
    assert!(pair.bob.labels(&before).is_empty());

    pair.bob.ok(&[
        "inbox", "rules", "add", "--from", "alice", "--label", "friends",
    ]);
    let rules = pair.bob.json(&["inbox", "rules", "list", "--json"]);
    assert_eq!(rules[0]["from"], "alice");
    assert_eq!(rules[0]["label"], "friends");

    // A new delivery is labelled as it arrives.
    let after = pair.alice.send("bob", "sent after the rule");
    pair.bob.wait_arrival(&after);
    assert_eq!(pair.bob.labels(&after), vec!["friends"]);
    assert_eq!(ids_with_label(&pair.bob, "friends"), vec![after.clone()]);

    // The text listing has a column each, labels and subject included ("-" when empty).
    let text = pair.bob.ok(&["inbox", "list"]);
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows.iter().all(|r| r.len() == 7), "{text}");
    let row = |id: &str| rows.iter().find(|r| r[0] == id).expect("listed").clone();
    // `labels()` above read both with `inbox read`, which marks a message read.
    assert_eq!((row(&after)[1], row(&before)[1]), ("read", "read"));
    assert_eq!(row(&after)[2], "alice");
    assert_eq!(row(&after)[4], "friends");
    assert_eq!(row(&after)[5], "-");
    assert_eq!(row(&after)[6], "sent after the rule");
    assert_eq!(row(&before)[4], "-");

    // The dry run shows the older message would change, and changes nothing.
    let planned = pair
        .bob
        .json(&["inbox", "rules", "apply", "--dry-run", "--json"]);
    assert_eq!(planned["changed"], 1, "{planned}");
    let planned = planned["changes"].as_array().expect("changes");
    assert_eq!(planned.len(), 1, "{planned:?}");
    assert_eq!(planned[0]["id"], before.as_str());
    assert!(
        pair.bob.labels(&before).is_empty(),
        "--dry-run changed a label"
    );
    let out = pair.bob.ok(&["inbox", "rules", "apply"]);
    assert!(out.contains("changed 1 message\n"), "{out}");
    assert_eq!(pair.bob.labels(&before), vec!["friends"]);
    let mut both = ids_with_label(&pair.bob, "friends");
    both.sort();
    let mut expected = vec![before.clone(), after.clone()];
    expected.sort();
    assert_eq!(both, expected);

    // Labels by hand.
    pair.bob
        .ok(&["inbox", "label", "add", &before[..8], "later"]);
    assert_eq!(ids_with_label(&pair.bob, "later"), vec![before.clone()]);
    pair.bob.ok(&["inbox", "label", "rm", &before, "later"]);
    assert!(ids_with_label(&pair.bob, "later").is_empty());

    // Mistakes are clear errors.
    assert_eq!(
        pair.bob
            .run(&["inbox", "label", "add", &before, "not ok"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        pair.bob
            .run(&["inbox", "rules", "add", "--from", "nobody", "--label", "x"])
            .status
            .code(),
        Some(4)
    );
    assert_eq!(
        pair.bob
            .run(&[
                "inbox", "rules", "add", "--from", "alice", "--label", "friends"
            ])
            .status
            .code(),
        Some(5)
    );
    assert_eq!(
        pair.bob.run(&["inbox", "rules", "rm", "999"]).status.code(),
        Some(4)
    );
    let id = rules[0]["id"].as_i64().expect("rule id").to_string();
    pair.bob.ok(&["inbox", "rules", "rm", &id, "--yes"]);
    assert!(
        pair.bob
            .json(&["inbox", "rules", "list", "--json"])
            .as_array()
            .expect("rules")
            .is_empty()
    );
}
