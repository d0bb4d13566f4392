//! Bad input: each case fails with a message naming the file and the problem, and leaves nothing behind.
