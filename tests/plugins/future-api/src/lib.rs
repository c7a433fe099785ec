//! A rule plugin built against a future major version of the contract, `pigeon:plugin@2.0.0`,
//! which this pigeon must refuse at load with a message naming the versions it supports.

wit_bindgen::generate!({
    inline: r#"
        package pigeon:plugin@2.0.0;

        interface rule-hooks {
            describe: func() -> bool;
            on-message: func(subject: string) -> list<string>;
        }

        world inbox-rule {
            export rule-hooks;
        }
    "#,
    world: "inbox-rule",
});

struct Future;

impl exports::pigeon::plugin::rule_hooks::Guest for Future {
    fn describe() -> bool {
        true
    }

    fn on_message(subject: String) -> Vec<String> {
        vec![subject]
    }
}

export!(Future);
