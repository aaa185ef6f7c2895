"""Mail authentication: DKIM, SPF, DMARC, SRS and the RSA/DER code they need."""
