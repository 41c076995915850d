//! SPEC §3 parsing (being written)
