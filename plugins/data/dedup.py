"""Exact and MinHash near-duplicate removal: the clustering is pure; MinHash and LSH are datasketch's.

Every function keeps the *first* sample of each duplicate cluster (lowest index), so a deduplicated
corpus keeps its original order and the result does not depend on how pairs were found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from lightning_eff.errors import require


class UnionFind:
    """Disjoint sets over ``0..n-1``; the representative of a set is its smallest member."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def exact_duplicate_pairs(keys: Sequence[str]) -> list[tuple[int, int]]:
    """``(first, later)`` index pairs of equal keys (each later one paired with the first)."""
    first: dict[str, int] = {}
    pairs = []
    for i, key in enumerate(keys):
        if key in first:
            pairs.append((first[key], i))
        else:
            first[key] = i
    return pairs


def clusters(n: int, pairs: Iterable[tuple[int, int]]) -> list[int]:
    """Cluster id (= smallest member) of each of ``n`` samples, duplicates being transitive."""
    uf = UnionFind(n)
    for i, j in pairs:
        uf.union(i, j)
    return [uf.find(i) for i in range(n)]


def kept_indices(cluster_ids: Sequence[int]) -> list[int]:
    """The representative of every cluster: the samples to keep, ascending."""
    return [i for i, c in enumerate(cluster_ids) if c == i]


def minhashes(shingle_sets: Sequence[set[str]], num_perm: int = 128, seed: int = 1) -> list:
    """A ``datasketch.MinHash`` of each shingle set."""
    datasketch = require("datasketch", "MinHash deduplication", extra="data")
    encoded = [[s.encode("utf-8") for s in sorted(shingle_set)] for shingle_set in shingle_sets]
    return datasketch.MinHash.bulk(encoded, num_perm=num_perm, seed=seed)


def near_duplicate_pairs(
    signatures: Sequence,
    threshold: float = 0.8,
    num_perm: int = 128,
    verify: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[int, int]]:
    """``(earlier, later)`` pairs whose estimated Jaccard similarity is at least ``threshold``.

    Candidates come from ``datasketch.MinHashLSH`` (banding tuned for ``threshold``); with ``verify``
    a candidate is kept only when the two MinHashes' estimated Jaccard reaches the threshold (LSH
    alone also admits some pairs below it). Each sample is queried against the earlier ones only.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be in (0, 1]")
    datasketch = require("datasketch", "MinHash deduplication", extra="data")
    lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm)
    pairs = []
    for i, sig in enumerate(signatures):
        for key in lsh.query(sig):
            j = int(key)
            if not verify or sig.jaccard(signatures[j]) >= threshold:
                pairs.append((j, i))
        lsh.insert(str(i), sig)
        if progress is not None:
            progress(1)
    return sorted(pairs)


def dedup(
    keys: Sequence[str],
    shingle_sets: Sequence[set[str]] | None = None,
    threshold: float = 0.8,
    num_perm: int = 128,
    seed: int = 1,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Exact duplicates by ``keys``, then (when ``shingle_sets``) MinHash near-duplicates.

    Returns ``kept`` (indices), ``cluster`` (cluster id per sample), and the counts removed by each stage."""
    n = len(keys)
    exact = exact_duplicate_pairs(keys)
    exact_clusters = clusters(n, exact)
    pairs = list(exact)
    near_removed = 0
    if shingle_sets is not None:
        # MinHash only over the survivors of the exact stage: duplicates would only repeat queries.
        survivors = kept_indices(exact_clusters)
        sigs = minhashes([shingle_sets[i] for i in survivors], num_perm=num_perm, seed=seed)
        near = [(survivors[a], survivors[b]) for a, b in near_duplicate_pairs(sigs, threshold, num_perm, progress=progress)]
        pairs += near
    cluster_ids = clusters(n, pairs)
    kept = kept_indices(cluster_ids)
    exact_removed = n - len(kept_indices(exact_clusters))
    near_removed = len(kept_indices(exact_clusters)) - len(kept)
    return {"kept": kept, "cluster": cluster_ids, "exact_removed": exact_removed, "near_removed": near_removed}
