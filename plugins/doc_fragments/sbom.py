# -*- coding: utf-8 -*-
# Copyright: nixcache.closure contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment(object):
    """What an SBOM document says beyond its closure: shared by the sbom module and lookup,
    which write the same document for the same options."""

    DOCUMENTATION = r'''
options:
  name:
    description:
      - The document's name (CycloneDX C(metadata.component.name), SPDX C(name)).
      - Default, for one top path its base name C(<hash>-<name>), for several their names
        joined by C(+).
    type: str
  cyclonedx_version:
    description: The CycloneDX specification version written.
    type: str
    choices: ['1.5', '1.6']
    default: '1.6'
  timestamp:
    description:
      - The document's creation time, pinned for reproducible output, as a UTC time
        (C(2026-01-31T12:00:00Z)) or seconds since 1970 (as C(SOURCE_DATE_EPOCH)).
      - With it the same closure always gives the same bytes; the serial number and the
        SPDX namespace are derived from the document.
      - Without it the time of writing is used.
    type: str
  cpe_vendors:
    description:
      - "The CPE vendor of Nix package names: a vendor, or vendor:product, by name, for
        example C({\"foo\": \"acme\", \"icu4c\": \"icu-project:international_components_for_unicode\"})."
      - Scanners such as grype match packages by CPE against the NVD, where the vendor is
        often not the package name. Names neither here nor in the collection's own short
        list of common ones (C(glibc) is C(gnu), C(krb5) is C(mit:kerberos_5), ...) get
        their own name as vendor, as syft guesses it.
    type: dict
    default: {}
'''
