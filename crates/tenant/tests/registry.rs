//! The registry against a real nats-server (crates/testkit starts one).

#![allow(clippy::unwrap_used, missing_docs)]

use tern_tenant::{NewTenant, Registry, TenantError};
use tern_testkit::NatsServer;

async fn registry(nats: &NatsServer) -> Registry {
    let client = async_nats::connect(nats.url()).await.unwrap();
    Registry::open(&async_nats::jetstream::new(client), 1)
        .await
        .unwrap()
}

fn tenant(name: &str, domains: &[&str]) -> NewTenant {
    NewTenant {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn tenants_own_distinct_domains_and_get_increasing_ids() {
    let nats = NatsServer::start().await;
    let reg = registry(&nats).await;
    let a = reg
        .add_tenant(tenant("acme", &["Acme.test", "acme.example"]))
        .await
        .unwrap();
    assert_eq!(a.id, 1);
    assert_eq!(a.domains, ["acme.test", "acme.example"]);
    let b = reg
        .add_tenant(tenant("beta", &["beta.test"]))
        .await
        .unwrap();
    assert_eq!(b.id, 2);
    match reg.add_tenant(tenant("acme", &["other.test"])).await {
        Err(TenantError::Exists(n)) => assert_eq!(n, "acme"),
        other => panic!("{other:?}"),
    }
    match reg
        .add_tenant(tenant("gamma", &["gamma.test", "acme.test"]))
        .await
    {
        Err(TenantError::DomainTaken { domain, owner }) => {
            assert_eq!((domain.as_str(), owner.as_str()), ("acme.test", "acme"));
        }
        other => panic!("{other:?}"),
    }
    // Nothing of the refused tenant stayed: its free domain is free again.
    let g = reg
        .add_tenant(tenant("gamma", &["gamma.test"]))
        .await
        .unwrap();
    assert_eq!(g.id, 3);
    assert!(matches!(
        reg.add_tenant(tenant("Bad Name", &["x.test"])).await,
        Err(TenantError::InvalidName(_))
    ));
    assert!(matches!(
        reg.add_tenant(tenant("nodomain", &[])).await,
        Err(TenantError::NoDomain)
    ));
    let names: Vec<String> = reg
        .list_tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["acme", "beta", "gamma"]);
}

#[tokio::test]
async fn api_keys_authenticate_their_tenant_until_revoked() {
    let nats = NatsServer::start().await;
    let reg = registry(&nats).await;
    reg.add_tenant(tenant("acme", &["acme.test"]))
        .await
        .unwrap();
    reg.add_tenant(tenant("beta", &["beta.test"]))
        .await
        .unwrap();
    let (key, secret) = reg.create_key("acme").await.unwrap();
    let (_, beta_secret) = reg.create_key("beta").await.unwrap();
    assert!(secret.starts_with(&format!("tern_{}_", key.id)));
    assert_eq!(reg.authenticate(&secret).await.unwrap().name, "acme");
    assert_eq!(reg.authenticate(&beta_secret).await.unwrap().name, "beta");
    // The stored record holds a hash, not the secret.
    assert!(!key.sha256.contains(&secret[secret.len() - 48..]));
    // One altered character: refused.
    let mut altered = secret.clone();
    let last = altered.pop().unwrap();
    altered.push(if last == '0' { '1' } else { '0' });
    assert!(matches!(
        reg.authenticate(&altered).await,
        Err(TenantError::BadKey)
    ));
    assert!(matches!(
        reg.authenticate("nonsense").await,
        Err(TenantError::BadKey)
    ));
    let listed = reg.list_keys("acme").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, key.id);
    reg.revoke_key(&key.id).await.unwrap();
    assert!(matches!(
        reg.authenticate(&secret).await,
        Err(TenantError::BadKey)
    ));
    assert!(reg.list_keys("acme").await.unwrap().is_empty());
    assert!(matches!(
        reg.revoke_key(&key.id).await,
        Err(TenantError::NoSuchKey(_))
    ));
    assert!(matches!(
        reg.create_key("nobody").await,
        Err(TenantError::NoSuchTenant(_))
    ));
}

#[tokio::test]
async fn campaign_ids_are_stable_per_tenant() {
    let nats = NatsServer::start().await;
    let reg = registry(&nats).await;
    assert_eq!(reg.campaign_id(1, "").await.unwrap(), 0);
    let spring = reg.campaign_id(1, "spring sale").await.unwrap();
    let autumn = reg.campaign_id(1, "autumn").await.unwrap();
    assert_ne!(spring, autumn);
    assert_eq!(reg.campaign_id(1, "spring sale").await.unwrap(), spring);
    assert_eq!(reg.campaign_id(2, "autumn").await.unwrap(), 1);
    // The ids in tokens lead back to their names.
    let names = reg.names().await.unwrap();
    assert_eq!(
        names.campaigns.get(&(1, spring)).map(String::as_str),
        Some("spring sale")
    );
    assert_eq!(
        names.campaigns.get(&(2, 1)).map(String::as_str),
        Some("autumn")
    );
    assert_eq!(names.campaigns.len(), 3);
}
