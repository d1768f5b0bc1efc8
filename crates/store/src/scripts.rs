//! The atomic Lua scripts. redis-rs sends EVALSHA and falls back to EVAL on NOSCRIPT, so a
//! restarted Redis (empty script cache) is handled transparently.

use std::sync::LazyLock;

use deadpool_redis::redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub(crate) static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("lua/prelude.lua"),
                include_str!($file)
            ))
        });
    };
}

script!(TRIGGER, "lua/trigger.lua");
script!(CLAIM, "lua/claim.lua");
script!(WRITE, "lua/write.lua");
script!(FINISH, "lua/finish.lua");
script!(RELEASE, "lua/release.lua");
script!(HEARTBEAT, "lua/heartbeat.lua");
script!(REAP, "lua/reap.lua");
script!(CANCEL, "lua/cancel.lua");
script!(EXPIRE, "lua/expire.lua");
script!(PUT_JOB, "lua/put_job.lua");
script!(DELETE_JOB, "lua/delete_job.lua");
script!(CREATE_FOLDER, "lua/create_folder.lua");
script!(CLAIM_FINISHED, "lua/claim_finished.lua");
script!(DELETE_FOLDER, "lua/delete_folder.lua");
script!(AMEND, "lua/amend.lua");
script!(TRIM, "lua/trim.lua");
script!(SECRET_VALUES, "lua/secret_values.lua");
