"""How each number format rounds and packs: pure functions, no modules."""
