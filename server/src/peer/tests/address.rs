//! The `PEER_ADDR/CLIENT_ADDR` notation: what [`PeerAddress`] writes it reads back, and
//! what it refuses says why.

use super::*;

#[test]
fn an_address_reads_back_what_it_writes() {
    for text in [
        "127.0.0.1:9001/127.0.0.1:8001",
        "10.0.0.2:9002/kahu-2.example:8002",
        "[::1]:9003/[::1]:8003",
        "[fe80::1%2]:9004/node-4:1",
    ] {
        let address = PeerAddress::parse(text).unwrap();
        assert_eq!(address.to_string(), text);
        assert_eq!(PeerAddress::parse(&address.to_string()), Ok(address));
    }
    let address = PeerAddress::parse("127.0.0.1:9001/localhost:8001").unwrap();
    assert_eq!(address.peer, SocketAddr::from(([127, 0, 0, 1], 9001)));
    assert_eq!(address.client, "localhost:8001");
}

#[test]
fn a_bad_address_is_refused_with_the_reason() {
    let long_client = format!("127.0.0.1:9001/{}:1", "a".repeat(NODE_ADDRESS_BYTES_MAX));
    let cases = [
        ("", "no `/` between the peer and the client address"),
        (
            "127.0.0.1:9001",
            "no `/` between the peer and the client address",
        ),
        (
            "localhost:9001/a:1",
            "the peer address `localhost:9001` is not IP:PORT",
        ),
        (
            "127.0.0.1/a:1",
            "the peer address `127.0.0.1` is not IP:PORT",
        ),
        (
            " 127.0.0.1:9001/a:1",
            "the peer address ` 127.0.0.1:9001` is not IP:PORT",
        ),
        ("127.0.0.1:9001/", "the client address is empty"),
        ("127.0.0.1:9001/a:1/b", "contains '/'"),
        ("127.0.0.1:9001/a:1,2=b:1", "contains ','"),
        ("127.0.0.1:9001/a :1", "contains ' '"),
        ("127.0.0.1:9001/a:1\n", "contains '\\n'"),
        (
            "127.0.0.1:9001/localhost",
            "the client address `localhost` is not HOST:PORT",
        ),
        (
            "127.0.0.1:9001/:8001",
            "the client address `:8001` is not HOST:PORT",
        ),
        (
            "127.0.0.1:9001/a:65536",
            "the client address `a:65536` is not HOST:PORT",
        ),
        (
            &long_client,
            "the client address is 257 bytes, more than node_address_bytes_max (255)",
        ),
    ];
    for (text, expected) in cases {
        let error = PeerAddress::parse(text).unwrap_err();
        assert!(error.contains(expected), "{text:?}: {error}");
    }
}

#[test]
fn check_accepts_exactly_what_parse_reads_back() {
    let mut address = address_of(1);
    assert_eq!(address.check(), Ok(()));
    address.client = "two words:1".to_string();
    assert!(address.check().is_err());
    assert!(PeerAddress::parse(&address.to_string()).is_err());
}

proptest! {
    #[test]
    fn every_generated_address_round_trips(address in peer_address_strategy()) {
        prop_assert_eq!(address.check(), Ok(()));
        prop_assert_eq!(PeerAddress::parse(&address.to_string()), Ok(address));
    }
}
