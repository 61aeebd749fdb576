"""The field's own validators, for the SBOM tests: cyclonedx-python-lib's JSON schema
validator (strict) and spdx-tools' parser and validator.  Each returns the list of
complaints, empty for a valid document."""


def cyclonedx_errors(text, version):
    """Complaints of the CycloneDX ``version`` ('1.5' or '1.6') schema about ``text``."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    schema = {'1.5': SchemaVersion.V1_5, '1.6': SchemaVersion.V1_6}[version]
    if isinstance(text, bytes):
        text = text.decode('utf-8')
    found = JsonStrictValidator(schema).validate_str(text, all_errors=True)
    return [str(error) for error in found] if found else []


def spdx_errors(path):
    """Complaints of spdx-tools about the SPDX 2.3 JSON file at ``path``."""
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
    return [message.validation_message
            for message in validate_full_spdx_document(parse_file(str(path)), 'SPDX-2.3')]
