//! SPEC §11 control records: parsing and field rules (being written).
