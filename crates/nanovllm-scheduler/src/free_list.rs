//! The LRU list of free KV blocks: an intrusive doubly-linked list over block ids.
//!
//! Invariants:
//! - Every operation is O(1): `prev` / `next` are indexed by block id, so removing a block
//!   from the middle (a prefix hit on a free cached block) needs no scan.
//! - `pop_front` returns the block that has been at the front longest, which is the block freed
//!   longest ago among those pushed with `push_back`.
//! - A block is in the list at most once; `contains` is exact.

const NIL: u32 = u32::MAX;

#[derive(Clone, Debug)]
pub(crate) struct FreeList {
    prev: Vec<u32>,
    next: Vec<u32>,
    in_list: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

impl FreeList {
    /// A list holding every block `0..num_blocks` in ascending order.
    pub(crate) fn with_all_blocks(num_blocks: usize) -> Self {
        let mut list = Self {
            prev: vec![NIL; num_blocks],
            next: vec![NIL; num_blocks],
            in_list: vec![false; num_blocks],
            head: NIL,
            tail: NIL,
            len: 0,
        };
        for block in 0..num_blocks as u32 {
            list.push_back(block);
        }
        list
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn contains(&self, block: u32) -> bool {
        self.in_list[block as usize]
    }

    /// Appends `block` as the most recently freed one (evicted last).
    pub(crate) fn push_back(&mut self, block: u32) {
        debug_assert!(!self.contains(block), "block {block} freed twice");
        let b = block as usize;
        self.prev[b] = self.tail;
        self.next[b] = NIL;
        if self.tail == NIL {
            self.head = block;
        } else {
            self.next[self.tail as usize] = block;
        }
        self.tail = block;
        self.in_list[b] = true;
        self.len += 1;
    }

    /// Prepends `block` so it is reused first (a block that caches nothing).
    pub(crate) fn push_front(&mut self, block: u32) {
        debug_assert!(!self.contains(block), "block {block} freed twice");
        let b = block as usize;
        self.prev[b] = NIL;
        self.next[b] = self.head;
        if self.head == NIL {
            self.tail = block;
        } else {
            self.prev[self.head as usize] = block;
        }
        self.head = block;
        self.in_list[b] = true;
        self.len += 1;
    }

    /// Takes the block at the front (freed longest ago), if any.
    pub(crate) fn pop_front(&mut self) -> Option<u32> {
        if self.head == NIL {
            return None;
        }
        let block = self.head;
        self.remove(block);
        Some(block)
    }

    /// Unlinks `block` if it is in the list; returns whether it was.
    pub(crate) fn remove(&mut self, block: u32) -> bool {
        let b = block as usize;
        if !self.in_list[b] {
            return false;
        }
        let (prev, next) = (self.prev[b], self.next[b]);
        if prev == NIL {
            self.head = next;
        } else {
            self.next[prev as usize] = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.prev[next as usize] = prev;
        }
        self.prev[b] = NIL;
        self.next[b] = NIL;
        self.in_list[b] = false;
        self.len -= 1;
        true
    }

    /// Blocks from the front (next to be reused) to the back. For checks and tests.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        // Bounded by the number of blocks so a corrupted (cyclic) list cannot spin forever.
        let mut cursor = self.head;
        (0..self.prev.len()).map_while(move |_| {
            (cursor != NIL).then(|| {
                let block = cursor;
                cursor = self.next[block as usize];
                block
            })
        })
    }

    /// Checks the links against `contains` and `len`. For tests and debugging.
    pub(crate) fn check(&self) -> Result<(), String> {
        let mut count = 0;
        let mut prev = NIL;
        for block in self.iter() {
            if !self.in_list[block as usize] {
                return Err(format!("free list links block {block} not marked in_list"));
            }
            if self.prev[block as usize] != prev {
                return Err(format!("free list: block {block} has a wrong prev link"));
            }
            prev = block;
            count += 1;
        }
        if prev != self.tail {
            return Err("free list: tail does not end the chain".into());
        }
        let marked = self.in_list.iter().filter(|&&x| x).count();
        if count != self.len || marked != self.len {
            return Err(format!(
                "free list: len {} but {count} linked and {marked} marked",
                self.len
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(list: &FreeList) -> Vec<u32> {
        list.iter().collect()
    }

    #[test]
    fn starts_in_ascending_order() {
        let list = FreeList::with_all_blocks(4);
        assert_eq!(order(&list), vec![0, 1, 2, 3]);
        list.check().unwrap();
    }

    #[test]
    fn pop_front_takes_oldest_and_push_back_appends() {
        let mut list = FreeList::with_all_blocks(3);
        assert_eq!(list.pop_front(), Some(0));
        assert_eq!(list.pop_front(), Some(1));
        list.push_back(0);
        assert_eq!(order(&list), vec![2, 0]);
        list.push_front(1);
        assert_eq!(order(&list), vec![1, 2, 0]);
        list.check().unwrap();
    }

    #[test]
    fn remove_from_middle_head_and_tail() {
        let mut list = FreeList::with_all_blocks(5);
        assert!(list.remove(2));
        assert!(!list.remove(2));
        assert!(list.remove(0));
        assert!(list.remove(4));
        assert_eq!(order(&list), vec![1, 3]);
        assert_eq!(list.len(), 2);
        assert!(!list.contains(2));
        list.check().unwrap();
        assert_eq!(list.pop_front(), Some(1));
        assert_eq!(list.pop_front(), Some(3));
        assert_eq!(list.pop_front(), None);
        list.check().unwrap();
        list.push_front(4);
        assert_eq!(order(&list), vec![4]);
        list.check().unwrap();
    }
}
