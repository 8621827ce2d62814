"""The report layer: a run's results as pytest and the report tools show them.

* :mod:`.live`: inner results as pytest reports, as they come, and the summary rows;
* :mod:`.evidence`: the report folder (a run's log and artifacts) every report points to;
* :mod:`.hostpaths`: container paths as the host names them;
* :mod:`.forward`: the host's presentation options, forwarded into the inner pytest;
* :mod:`.html_extras`, :mod:`.allure_results`, :mod:`.github`: pytest-html, Allure and GitHub Actions;
* :mod:`.hints`: what to do about a run that failed for want of what was not shipped.
"""
