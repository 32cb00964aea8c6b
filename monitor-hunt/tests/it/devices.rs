//! `monitor devices` over the local store.

use std::collections::BTreeMap;

use monitor_hunt::cli::{self, DevicesArgs, Format};
use monitor_hunt::time::parse_datetime;

use crate::common::{fixture, fixture_events};

/// What the fixture's lines say of one device.
struct Seen {
    first: i64,
    last: i64,
    events: i64,
    blocked: i64,
    protection: Option<(i64, String)>,
}

#[test]
fn devices_sum_up_each_device_of_the_store() {
    let fixture = fixture();
    let devices = fixture.store.devices().expect("list the devices");
    // What the fixture's own lines say, per DeviceName.
    let mut expected: BTreeMap<String, Seen> = BTreeMap::new();
    for event in fixture_events() {
        let name = event["DeviceName"].as_str().unwrap_or_default().to_string();
        let time = parse_datetime(event["Timestamp"].as_str().expect("a Timestamp")).expect("it parses");
        let action = event["ActionType"].as_str().unwrap_or_default().to_string();
        let seen = expected.entry(name).or_insert(Seen {
            first: i64::MAX,
            last: i64::MIN,
            events: 0,
            blocked: 0,
            protection: None,
        });
        seen.first = seen.first.min(time);
        seen.last = seen.last.max(time);
        seen.events += 1;
        seen.blocked += i64::from(action == "ExploitGuardNetworkProtectionBlocked");
        let newer = seen.protection.as_ref().is_none_or(|(t, _)| time >= *t);
        if action.starts_with("ExploitGuardNetworkProtection") && newer {
            seen.protection = Some((time, action));
        }
    }
    assert_eq!(devices.len(), expected.len(), "{devices:?}");
    for (device, (name, seen)) in devices.iter().zip(&expected) {
        assert_eq!(&device.name, name);
        assert_eq!((device.first_seen, device.last_seen), (seen.first, seen.last), "{name}");
        assert_eq!((device.events, device.blocked), (seen.events, seen.blocked), "{name}");
        assert_eq!(device.last_protection, seen.protection.as_ref().map(|(_, a)| a.clone()), "{name}");
    }
    let host1 = devices.iter().find(|d| d.name == "host1").expect("host1");
    assert!(host1.blocked > 0, "the fixture's host1 blocked a connection");
    // Its newest protection row is an Audited one (the fixture's daemon ran in audit mode at the end).
    assert_eq!(host1.mode(), "audit", "{host1:?}");
    let gw1 = devices.iter().find(|d| d.name == "gw1").expect("gw1");
    assert_eq!(gw1.mode(), "-", "no protection row, no mode: {gw1:?}");

    let mut out = Vec::new();
    let args = DevicesArgs {
        read: cli::ReadArgs {
            store: Some(fixture.path.clone()),
            format: Format::Csv,
            fleet: Default::default(),
        },
        stale_after: std::time::Duration::from_secs(120),
    };
    cli::devices(&args, &mut out).expect("devices runs");
    let text = String::from_utf8(out).expect("utf-8");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("DeviceName,DeviceId,FirstSeen,LastSeen,Events,Blocked,Mode"));
    assert_eq!(lines.count(), expected.len(), "{text}");
}
