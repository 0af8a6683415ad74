//! The Merkle tree against RFC 6962: a naive recursive implementation written here from the
//! RFC's definitions (section 2.1), and the published Certificate Transparency test vectors.

use offswitch_audit::merkle::{self, Hash};
use sha2::{Digest as _, Sha256};

/// `MTH(D[n])` exactly as RFC 6962 section 2.1 defines it, on the raw leaf data.
fn naive_mth(data: &[Vec<u8>]) -> Hash {
    match data.len() {
        0 => Sha256::digest([]).into(),
        1 => Sha256::new()
            .chain_update([0x00])
            .chain_update(&data[0])
            .finalize()
            .into(),
        n => {
            let k = largest_power_of_two_below(n);
            Sha256::new()
                .chain_update([0x01])
                .chain_update(naive_mth(&data[..k]))
                .chain_update(naive_mth(&data[k..]))
                .finalize()
                .into()
        }
    }
}

/// `PATH(m, D[n])` as RFC 6962 section 2.1.1 defines it.
fn naive_path(m: usize, data: &[Vec<u8>]) -> Vec<Hash> {
    let n = data.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = largest_power_of_two_below(n);
    if m < k {
        let mut path = naive_path(m, &data[..k]);
        path.push(naive_mth(&data[k..]));
        path
    } else {
        let mut path = naive_path(m - k, &data[k..]);
        path.push(naive_mth(&data[..k]));
        path
    }
}

/// The largest power of two smaller than n, by counting up (n > 1).
fn largest_power_of_two_below(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

fn data(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("leaf {i}").into_bytes().repeat(i % 3 + 1))
        .collect()
}

#[test]
fn roots_and_paths_match_the_rfc_definitions_at_many_sizes() {
    let sizes = (0..=70).chain([127, 128, 129, 255, 256, 257, 1000, 1001, 1025]);
    let mut paths_checked = 0;
    for n in sizes {
        let data = data(n);
        let leaves: Vec<Hash> = data.iter().map(|d| merkle::leaf_hash(d)).collect();
        let expected_root = naive_mth(&data);
        assert_eq!(merkle::root(&leaves), expected_root, "root of {n}");
        // The incremental root is right after every single append, not only at the end.
        if n <= 70 {
            let mut frontier = merkle::Frontier::new();
            for (i, leaf) in leaves.iter().enumerate() {
                frontier.push(*leaf);
                assert_eq!(frontier.root(), naive_mth(&data[..=i]), "prefix {}", i + 1);
            }
        }
        let indices: Vec<usize> = if n <= 70 {
            (0..n).collect()
        } else {
            vec![0, 1, n / 3, n / 2, n - 2, n - 1]
        };
        for m in indices {
            let path = merkle::audit_path(m as u64, &leaves).unwrap();
            assert_eq!(path, naive_path(m, &data), "path of {m} in {n}");
            assert!(merkle::verify_path(
                m as u64,
                n as u64,
                &leaves[m],
                &path,
                &expected_root
            ));
            // Any other leaf at this place fails.
            let wrong = merkle::leaf_hash(b"not this leaf");
            assert!(!merkle::verify_path(
                m as u64,
                n as u64,
                &wrong,
                &path,
                &expected_root
            ));
            paths_checked += 1;
        }
        assert!(merkle::audit_path(n as u64, &leaves).is_none());
    }
    assert!(paths_checked > 2500, "{paths_checked}");
}

#[test]
fn known_answers() {
    // The empty tree is SHA-256 of nothing.
    assert_eq!(
        hex::encode(merkle::empty_root()),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(merkle::root(&[]), merkle::empty_root());
    // Certificate Transparency's published test vectors for RFC 6962: these eight leaves and
    // the roots of their first 1 to 8.
    let leaves_hex = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    let roots = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    let data: Vec<Vec<u8>> = leaves_hex.iter().map(|h| hex::decode(h).unwrap()).collect();
    let leaves: Vec<Hash> = data.iter().map(|d| merkle::leaf_hash(d)).collect();
    for (n, root) in roots.iter().enumerate() {
        assert_eq!(
            hex::encode(merkle::root(&leaves[..=n])),
            *root,
            "size {}",
            n + 1
        );
        assert_eq!(
            hex::encode(naive_mth(&data[..=n])),
            *root,
            "naive size {}",
            n + 1
        );
    }
    // And the published audit path of leaf 5 in the tree of 8.
    let path: Vec<String> = merkle::audit_path(5, &leaves)
        .unwrap()
        .iter()
        .map(hex::encode)
        .collect();
    assert_eq!(
        path,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ]
    );
}
