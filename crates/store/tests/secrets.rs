//! Secrets against a real redis-server: a folder's, sealed, open only as that folder's
//! (a stored value copied to another folder or to the global secrets does not), and a
//! job finds the nearest folder's before a global one.

use deadpool_redis::redis::AsyncCommands;
use kiln_model::{keys, Name};
use kiln_store::{SealKey, Store, StoreError, StoreOptions};
use kiln_testkit::RedisServer;

#[tokio::test]
async fn a_folders_sealed_secret_opens_only_as_that_folders() {
    let redis = RedisServer::start();
    let store = Store::new(&StoreOptions::new(redis.url())).expect("store");
    let key = SealKey::from_hex(&"ab".repeat(32)).expect("key");
    let team = Name::parse("team").expect("name");
    let other = Name::parse("other").expect("name");
    store.create_folder(&team, None).await.expect("folder");
    store.create_folder(&other, None).await.expect("folder");
    store
        .put_secret(Some(&team), "TOKEN", "team-value-1", "tests", Some(&key))
        .await
        .expect("put");
    let names = ["TOKEN".to_owned()];
    let found = store
        .secret_values(&names, Some(&team), Some(&key))
        .await
        .expect("read");
    assert_eq!(found, ["team-value-1"]);
    let err = store
        .secret_values(&names, Some(&other), Some(&key))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");

    // Copied by hand to another folder and to the global secrets: neither opens.
    let mut c = redis.pool().get().await.expect("connection");
    let stored: String = c
        .hget(keys::folder_secrets(&team), "TOKEN")
        .await
        .expect("hget");
    for (hash, folder) in [
        (keys::folder_secrets(&other), Some(&other)),
        (keys::SECRETS.to_owned(), None),
    ] {
        let _: () = c.hset(&hash, "TOKEN", &stored).await.expect("hset");
        let err = store
            .secret_values(&names, folder, Some(&key))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Invalid { field, .. } if field == "secrets.key"),
            "{hash}: {err}"
        );
    }
}
