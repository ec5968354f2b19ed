//! What the benchmarks share: enrolling simulated video servers into the DEMO key's
//! default pool, one code each.

use netkey::core::{Command, EnrolRequest, PoolId};

const KEY: &str = "DEMO";

/// The two commands that enrol server number `s` as `server_id`: a code made for it,
/// then the enrolment that spends it.
pub fn enrol_commands(s: usize, server_id: String) -> [Command; 2] {
    let code = format!("{s:08}");
    [
        Command::CreateCode {
            pool: PoolId::default_of(KEY),
            code: code.clone(),
        },
        Command::Enrol {
            request: EnrolRequest {
                code,
                name: format!("vs{s}"),
                version: "1".into(),
                server_id,
                credential: vec![7; 32],
                existing: None,
            },
        },
    ]
}
