//! [`World::example`]: a small, realistic world for `ci-gateway dev` and the binary.
//!
//! Log chunks deliberately split lines (and one ANSI sequence's line) the way the ATC's log
//! writer does, so clients have to reassemble lines per origin and stream.

use std::time::Duration;

use serde_json::json;

use crate::world::{Job, Pipeline, Role, Script, Team, User, World};

/// Plan id of the `get: source` step.
const GET_ORIGIN: &str = "5f3e2a10";
/// Plan id of the `task: unit` step.
const TASK_ORIGIN: &str = "64a1b2c3";
/// Plan id of the `task: deploy` step.
const DEPLOY_ORIGIN: &str = "7b9d0e44";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `payments/build-test`: fetch, compile, test; succeeds after about 3 s.
fn build_test() -> Script {
    Script::new()
        .start_get(GET_ORIGIN)
        .log_out("Cloning into '/tmp/build/get'...\n")
        .sleep(ms(300))
        .log_out("9f2c4e1 Retry settlement webhooks with backoff (#412)\n")
        .finish_get(json!({"ref": "9f2c4e1a7d3b5f60e8c2a4b6d8f0e1c3a5b7d9f1"}))
        .start_task(TASK_ORIGIN)
        .log_out("\u{1b}[1m\u{1b}[32m   Compiling\u{1b}[0m ledger v0.9.3\n\u{1b}[1m\u{1b}[32m   Compil")
        .sleep(ms(400))
        .log_out("ing\u{1b}[0m payments-core v0.4.2 (/tmp/build/get/core)\n")
        .log_err(
            "warning: unused variable: `retries`\n  --> core/src/client.rs:88:13\n   |\n88 |     let re",
        )
        .log_err(
            "tries = 3;\n   |         ^^^^^^^ help: if this is intentional, prefix it with an underscore: `_retries`\n\n",
        )
        .sleep(ms(500))
        .log_out("\u{1b}[1m\u{1b}[32m   Compiling\u{1b}[0m payments-api v0.4.2 (/tmp/build/get/api)\n")
        .sleep(ms(500))
        .log_out(
            "\u{1b}[1m\u{1b}[32m    Finished\u{1b}[0m `test` profile [unoptimized + debuginfo] target(s) in 41.27s\n     Running unittests src/lib.rs (target/debug/deps/payments_core-3f2a9c1d)\n\nrunning 6 tests\n",
        )
        .log_out("test ledger::tests::balances_never_go_negative ... ok\ntest ledger::tests::double_entry_sums_to_zero ... ok\ntest refunds::tests::partial_ref")
        .sleep(ms(400))
        .log_out("und ... ok\ntest refunds::tests::refund_after_settlement ... ok\ntest webhooks::tests::retries_with_backoff ... ok\ntest webhooks::tests::signature_is_verified ... ok\n")
        .sleep(ms(300))
        .log_out("\ntest result: \u{1b}[32mok\u{1b}[0m. 6 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.84s\n\n")
        .finish_task(0)
        .succeed()
}

/// `payments/deploy`: a rollout that times out; fails after about 2 s.
fn deploy() -> Script {
    Script::new()
        .start_task(DEPLOY_ORIGIN)
        .log_out("+ kubectl --context prod-eu apply -f k8s/payments-api.yaml\n")
        .sleep(ms(400))
        .log_out("deployment.apps/payments-api configured\nservice/payments-api unchanged\n+ kubectl rollout status deploy/payments-api --timeout=90s\n")
        .sleep(ms(600))
        .log_out("Waiting for deployment \"payments-api\" rollout to finish: 1 out of 3 new replicas have been updated...\n")
        .sleep(ms(600))
        .log_err("error: deployment \"payments-api\" exceeded its progress deadline\n")
        .log_err("Error from server (BadRequest): container \"api\" in pod \"payments-api-7c9f8d6b5-x2kqp\" is waiting to start: CreateContainerConfigError: secret \"payments-db\" not fou")
        .log_err("nd\n")
        .finish_task(1)
        .fail()
}

/// `integration/integration`: a progress line every 1.5 s for 90 s, long enough to cancel.
fn integration() -> Script {
    let scenarios = [
        "checkout flow",
        "refund flow",
        "card declined",
        "3-D Secure challenge",
        "webhook replay",
        "currency conversion",
    ];
    let mut script = Script::new()
        .start_task("8c4f2a91")
        .log_out("Starting docker compose stack (postgres, redis, payments-api, fake-psp)...\n");
    for i in 1..=60 {
        let name = scenarios[i % scenarios.len()];
        script = script.sleep(ms(1500)).log_out(format!(
            "[{i:02}/60] {name} ... passed ({}.{}s)\n",
            1,
            i % 10
        ));
    }
    script
        .log_out("\n60 scenarios, 60 passed, 0 failed\n")
        .finish_task(0)
        .succeed()
}

/// A job that succeeds quickly with a short log.
fn quick(origin: &str, line: &str) -> Script {
    Script::new()
        .start_task(origin)
        .log_out(line.to_owned())
        .sleep(ms(800))
        .log_out("done\n")
        .finish_task(0)
        .succeed()
}

/// The example world (see [`World::example`]).
pub(crate) fn world() -> World {
    World::new()
        .user(
            User::new(World::EXAMPLE_USERNAME, World::EXAMPLE_PASSWORD).role("main", Role::Member),
        )
        .user(User::new("auditor", "auditor-password").role("main", Role::Viewer))
        .team(
            Team::new("main")
                .pipeline(
                    Pipeline::new("payments")
                        .job(Job::new("build-test", build_test()))
                        .job(Job::new("deploy", deploy()))
                        .job(
                            Job::new("release", quick("9a0b1c2d", "tagging v0.4.2\n"))
                                .disable_manual_trigger(true),
                        ),
                )
                .pipeline(Pipeline::new("integration").job(Job::new("integration", integration())))
                .pipeline(
                    Pipeline::new("docs")
                        .public(true)
                        .job(Job::new("publish", quick("1d2e3f40", "mkdocs build\n")).paused(true)),
                )
                .pipeline(
                    Pipeline::new("preview")
                        .instance_var("branch", json!("main"))
                        .job(Job::new(
                            "smoke",
                            quick(
                                "2e3f4a51",
                                "curl -fsS https://preview.example.com/healthz\n",
                            ),
                        )),
                )
                .pipeline(
                    Pipeline::new("legacy-monolith")
                        .archived(true)
                        .paused(true)
                        .job(Job::new("build", quick("3f4a5b62", "make all\n"))),
                ),
        )
}
