"""Push mode's options on the controller, and what of them reaches the host."""
from ansible_collections.nixcache.closure.plugins.plugin_utils.push import (
    _controller_options,
    _module_args,
)

ARGS = dict(paths='/nix/store/0c4v0gqhb1gs2xp0fqgy6bbg6pdvvb2h-postgresql-and-plugins-15.8',
            substituters=['https://nix:s3cret@cache.example.org'], url_password='pw',
            bearer_token='tok', aws_secret_access_key='sk', region='eu-west-1',
            trusted_public_keys=['cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY='],
            require_sigs=False, fetch_on='controller', root='/mnt', jobs='8',
            controller_cache_max_mb='100')


def test_options_are_validated_as_the_module_would():
    options, errors = _controller_options(ARGS)
    assert errors == []
    assert options['paths'] == [ARGS['paths']]          # a single path becomes a list
    assert options['jobs'] == 8 and options['controller_cache_max_mb'] == 100
    assert options['aws_region'] == 'eu-west-1' and options['secret_key'] == 'sk'   # aliases
    assert options['timeout'] == 30                      # defaults
    _options, errors = _controller_options(dict(ARGS, jobs='many'))
    assert errors and 'jobs' in errors[0]


def test_the_host_gets_no_cache_and_no_credential():
    sent = _module_args(ARGS, [], '/tmp/x', plan=True)
    assert sent['substituters'] == []
    for secret in ('url_password', 'bearer_token', 'aws_secret_access_key', 'region'):
        assert secret not in sent
    assert 's3cret' not in repr(sent)
    assert sent['trusted_public_keys'] == ARGS['trusted_public_keys']
    assert sent['require_sigs'] is False and sent['root'] == '/mnt'
    assert sent['pushed'] == dict(entries=[], directory='/tmp/x', plan=True)
