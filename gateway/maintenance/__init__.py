"""The estate's own work: the equipment register, repair orders, inspections, the night shift's
handover and the monthly service and safety report. Tables live in gateway/ledger/maintenance.py."""
