//! The SDK carries copies of rules the host enforces (it builds for wasm and shares no code with
//! the host). Here both run natively on the same inputs and must agree.

#[test]
fn the_sdk_and_the_host_agree_on_labels() {
    let long = "x".repeat(64);
    let too_long = "x".repeat(65);
    let cases = [
        "finance",
        "work/urgent",
        "a:b.c-d_e",
        "Größe",
        "日本",
        long.as_str(),
        too_long.as_str(),
        "",
        "two words",
        "tab\there",
        "semi;colon",
        "emoji🙂",
        "plus+",
        "back\\slash",
    ];
    for label in cases {
        let host = pigeon::inbox::rules::validate_label(label).is_ok();
        let sdk = pigeon_plugin_sdk::check_label(label).is_ok();
        assert_eq!(host, sdk, "{label:?}: host says {host}, SDK says {sdk}");
    }
    // Both directions are exercised.
    assert!(pigeon_plugin_sdk::check_label("finance").is_ok());
    assert!(pigeon_plugin_sdk::check_label("two words").is_err());
}
