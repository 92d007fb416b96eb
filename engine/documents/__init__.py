"""Transfer-of-care documents: PRSB-headed R4 document Bundles built from the shared record (issue 5).

definitions/ (data) · definitions.py (format) · selection.py, narrative.py, build.py (pure builder) ·
receive.py (checks on received documents) · html_page.py, sanitise.py (reading view) · gather.py,
service.py (I/O). docs/transfer-of-care.md describes them.
"""
