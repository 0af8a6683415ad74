//! The RFC 6962 Merkle tree over the log's records: leaf and node hashes, the incremental root
//! the writer and the verifier keep in O(log n) memory, audit paths, and their verification.
//!
//! The definitions are RFC 6962 section 2.1 (and RFC 9162 section 2.1.3.2 for checking a path):
//! a leaf hash is SHA-256(0x00 || leaf bytes), an interior node SHA-256(0x01 || left || right),
//! and a tree of n > 1 leaves splits at k, the largest power of two smaller than n.

use sha2::{Digest, Sha256};

/// A SHA-256 output.
pub type Hash = [u8; 32];

/// SHA-256 of nothing: the root of the empty tree (`MTH({})` in RFC 6962).
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(leaf);
    hasher.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of a growing tree, kept as the roots of its perfect subtrees (one per set bit of
/// the size, largest first), so appending is amortised O(1) and memory is O(log n).
#[derive(Clone, Debug, Default)]
pub struct Frontier {
    size: u64,
    /// `(height, root)` of each perfect subtree, heights strictly decreasing.
    subtrees: Vec<(u32, Hash)>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of leaves appended.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append a leaf by its leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut carry = (0u32, leaf);
        // Two perfect subtrees of the same height merge, like a carry in binary addition.
        while let Some(&(height, left)) = self.subtrees.last() {
            if height != carry.0 {
                break;
            }
            self.subtrees.pop();
            carry = (height + 1, node_hash(&left, &carry.1));
        }
        self.subtrees.push(carry);
        self.size += 1;
    }

    /// `MTH` of the leaves so far. For a size that is not a power of two, RFC 6962 splits at the
    /// largest power of two below it, again and again on the right: that is exactly folding the
    /// perfect subtrees from the smallest (rightmost) up.
    pub fn root(&self) -> Hash {
        let mut subtrees = self.subtrees.iter().rev();
        let Some(&(_, mut root)) = subtrees.next() else {
            return empty_root();
        };
        for (_, left) in subtrees {
            root = node_hash(left, &root);
        }
        root
    }
}

/// `MTH(D[n])` of the given leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    let mut frontier = Frontier::new();
    for leaf in leaves {
        frontier.push(*leaf);
    }
    frontier.root()
}

/// `PATH(index, D[n])`: the sibling hashes from the leaf up to the root, or `None` when
/// `index` is not below `leaves.len()`.
pub fn audit_path(index: u64, leaves: &[Hash]) -> Option<Vec<Hash>> {
    let index = usize::try_from(index).ok()?;
    if index >= leaves.len() {
        return None;
    }
    let mut path = Vec::new();
    subtree_path(index, leaves, &mut path);
    Some(path)
}

/// Check an audit path: whether the leaf at `index` of a tree of `tree_size` leaves, with this
/// path, has the root `root` (RFC 9162 section 2.1.3.2).
pub fn verify_path(index: u64, tree_size: u64, leaf: &Hash, path: &[Hash], root: &Hash) -> bool {
    if index >= tree_size {
        return false;
    }
    let mut position = index;
    let mut last = tree_size - 1;
    let mut hash = *leaf;
    for sibling in path {
        if last == 0 {
            return false;
        }
        if position & 1 == 1 || position == last {
            hash = node_hash(sibling, &hash);
            // A right edge whose sibling is missing at this level moves up without hashing.
            while position & 1 == 0 && position != 0 {
                position >>= 1;
                last >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        position >>= 1;
        last >>= 1;
    }
    last == 0 && hash == *root
}

/// The path of `index` in `leaves` (not empty), appended bottom-up.
fn subtree_path(index: usize, leaves: &[Hash], path: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let split = largest_power_of_two_below(leaves.len());
    let (left, right) = leaves.split_at(split);
    if index < split {
        subtree_path(index, left, path);
        path.push(root(right));
    } else {
        subtree_path(index - split, right, path);
        path.push(root(left));
    }
}

/// The largest power of two strictly smaller than `n` (n > 1).
fn largest_power_of_two_below(n: usize) -> usize {
    debug_assert!(n > 1);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_the_largest_power_of_two_below() {
        let splits: Vec<usize> = (2..=9).map(largest_power_of_two_below).collect();
        assert_eq!(splits, [1, 2, 2, 4, 4, 4, 4, 8]);
    }

    #[test]
    fn a_path_checks_only_at_its_own_index_and_size() {
        let leaves: Vec<Hash> = (0u8..5).map(|i| leaf_hash(&[i])).collect();
        let root = root(&leaves);
        let path = audit_path(3, &leaves).unwrap();
        assert!(verify_path(3, 5, &leaves[3], &path, &root));
        assert!(!verify_path(2, 5, &leaves[3], &path, &root));
        // The same hashes under another size fold to the same value only if that root is the
        // one given: the size is bound to the root by the signed checkpoint, not by the path.
        assert!(!verify_path(3, 9, &leaves[3], &path, &root));
        assert!(!verify_path(3, 5, &leaves[2], &path, &root));
        assert!(!verify_path(5, 5, &leaves[3], &path, &root));
        assert!(audit_path(5, &leaves).is_none());
    }
}
