"""`python3 -m gateway.retention run|vacuum` as operators learnt it: the command lives in
gateway/ledger/retention.py (`python3 -m gateway.ledger.retention`); nothing is importable here."""

if __name__ == "__main__":
    import sys

    from gateway.ledger.retention import main

    sys.exit(main())
