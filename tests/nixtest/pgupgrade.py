"""What the tests of major upgrades share: pg_upgrade's stages as its internal log names them,
and a database of many tables, which makes pg_upgrade slow enough to be caught at a stage."""

# In pg_upgrade's order; from the ".old" suffix on, the old cluster cannot start as it is
# (link mode: its global/pg_control is renamed).
STAGES = ('Restoring database schemas', 'Adding ".old" suffix', 'Linking user relation files',
          'Copying user relation files')
PAST_THE_OLD_SUFFIX = STAGES[1:]


def many_tables_sql(count=3000, per_transaction=500):
    """Statements that create the tables t1 .. t<count>, ``per_transaction`` in each (every
    table takes locks: thousands in one transaction exhaust the lock table)."""
    return ["do $$ begin for n in %d..%d loop execute format("
            "'create table t%%s (id int primary key, note text)', n); end loop; end $$"
            % (first, min(first + per_transaction - 1, count))
            for first in range(1, count + 1, per_transaction)]
