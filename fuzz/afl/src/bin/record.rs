fn main() {
    afl::fuzz!(|data: &[u8]| {
        tooldb_node::fuzzing::record(data);
    });
}
