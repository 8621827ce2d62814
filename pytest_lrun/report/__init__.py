"""The report layer: a run's results as pytest and the report tools show them.

* :mod:`.live`: inner results as pytest reports, as they come (:class:`~.live.RunReports`);
* :mod:`.making`: the pytest reports of one run's inner tests, and which reports are pytest-lrun's;
* :mod:`.run_report`: a run's own report, ``DIR::lrun[machine]``;
* :mod:`.flaky`: each inner test reported once over its reruns, and named flaky when it passed on one;
* :mod:`.failures`: failure text as a report's ``longrepr``, and why a stopped test failed;
* :mod:`.naming`: dispatched directories and their inner tests as the host names them;
* :mod:`.outcomes`: what a job came to (a result, an error, a detached run);
* :mod:`.summary`: the end-of-session table of runs;
* :mod:`.evidence`: the report folder (a run's log and artifacts) every report points to;
* :mod:`.hostpaths`: container paths as the host names them;
* :mod:`.forward`: the host's presentation options, forwarded into the inner pytest;
* :mod:`.html_extras`, :mod:`.allure_results`, :mod:`.github`: pytest-html, Allure and GitHub Actions;
* :mod:`.hints`: what to do about a run that failed for want of what was not shipped.
"""
